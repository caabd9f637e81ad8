"""Logits at the scored tokens only (step.scored_sums): the same sums, gradients and updates
as the logits of every token, and no head work for chunks without a scored token."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxtrain.config import Reader
from jaxtrain.errors import UserError
from jaxtrain.models import gemma3
from jaxtrain.models import lora as lora_lib
from jaxtrain.models.llama import Llama
from jaxtrain import step as step_lib
from jaxtrain import tasks

VOCAB = 300
B, T = 3, 40


def next_token(logits="scored"):
  return tasks.build(Reader(ml_collections.ConfigDict({"task": {"name": "next_token", "logits": logits},
                                                       "loss": {}})))


def lm_batch(seed=0, scored=0.2, per_example=False):
  rng = np.random.default_rng(seed)
  weights = (rng.random((B, T)) < scored) * rng.uniform(0.5, 2.0, (B, T))
  if per_example:
    weights = rng.uniform(0.0, 2.0, B) * (np.arange(B) != 1)  # The second example weighs nothing.
  return {"inputs": rng.integers(0, VOCAB, (B, T)).astype(np.int32),
          "targets": rng.integers(0, VOCAB, (B, T)).astype(np.int32),
          "bytes": rng.integers(1, 5, (B, T)).astype(np.int32),
          "weights": weights.astype(np.float32)}


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
  monkeypatch.setattr(step_lib, "SCORED_CHUNK", 27)  # Rows of 40 in chunks of 9: 5, the last one padded.


def train_both(model, batch, accumulate_steps=1):
  """(metrics, new params) of one step with logits='all' and with 'scored'. SGD: Adam's first
  step is about lr * sign(gradient), which turns a rounding difference in a tiny gradient
  into a whole step."""
  tx = optax.sgd(0.5)
  state = step_lib.create_state(model, tx, ([batch["inputs"][:1]], {}), 0)
  out = {}
  for logits in ("all", "scored"):
    task = next_token(logits)
    task.check_batch(batch, "the test")
    assert step_lib.splits_head(model, task) == (logits == "scored")
    step = jax.jit(step_lib.make_train_step(model, task, tx, lambda s: 1e-2, accumulate_steps=accumulate_steps))
    new, metrics = step(jax.tree.map(jnp.array, state), batch)
    out[logits] = (jax.tree.map(float, metrics), new.params)
  return out["all"], out["scored"]


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("per_example", [False, True])
def test_a_train_step_on_the_scored_logits_equals_one_on_every_logit(tied, per_example):
  model = Llama(vocab_size=VOCAB, dim=32, num_layers=2, num_heads=4, tie_embeddings=tied)
  (all_metrics, all_params), (metrics, params) = train_both(model, lm_batch(per_example=per_example))
  assert set(metrics) == set(all_metrics) and "bits_per_byte" in metrics
  for name in metrics:
    np.testing.assert_allclose(metrics[name], all_metrics[name], rtol=2e-6, err_msg=name)
  for a, b in zip(jax.tree.leaves(all_params), jax.tree.leaves(params), strict=True):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)


def test_lora_and_accumulation_on_the_scored_logits_equal_every_logit():
  model = lora_lib.LoRAModel(Llama(vocab_size=VOCAB, dim=32, num_layers=2, num_heads=4, tie_embeddings=True),
                             lora_lib.Spec(rank=4, alpha=8.0, dropout=0.0, targets=("q_proj",),
                                           kernels=("params/layers_0/self_attn/q_proj/kernel",)))
  (all_metrics, all_params), (metrics, params) = train_both(model, lm_batch(seed=1), accumulate_steps=3)
  np.testing.assert_allclose(metrics["loss"], all_metrics["loss"], rtol=2e-6)
  np.testing.assert_allclose(metrics["grad_norm"], all_metrics["grad_norm"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(all_params), jax.tree.leaves(params), strict=True):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)


def test_evaluation_on_the_scored_logits_equals_every_logit_and_masks_padding_rows():
  model = Llama(vocab_size=VOCAB, dim=32, num_layers=2, num_heads=4)
  batch = {**lm_batch(seed=2), "_mask": np.array([1.0, 0.0, 1.0], np.float32)}
  variables = step_lib.init_variables(model, ([batch["inputs"][:1]], {}), 0)
  sums = {logits: jax.tree.map(float, jax.jit(step_lib.make_eval_sums(model, next_token(logits)))(variables, batch))
          for logits in ("all", "scored")}
  for name in sums["all"]:
    np.testing.assert_allclose(sums["scored"][name], sums["all"][name], rtol=2e-6, err_msg=name)
  assert sums["scored"]["weight"] == pytest.approx(float((batch["weights"] * batch["_mask"][:, None]).sum()))


def test_chunks_without_a_scored_token_compute_no_logits():
  """The head runs once per chunk where a row has a scored token: in each row the scored
  tokens come first."""
  calls = []
  model = Llama(vocab_size=VOCAB, dim=32, num_layers=1, num_heads=4)
  batch = lm_batch(seed=3)
  weights = np.zeros((B, T), np.float32)
  weights[[0, 2, 2], [5, 0, 39]] = 1.0  # Far apart, but in their rows' first chunk of 9 tokens.
  weights[1, 10:30] = 0.5              # 20 in a row: 3 chunks of 9; 5 in the row of 40.
  batch["weights"] = weights
  variables = step_lib.init_variables(model, ([batch["inputs"][:1]], {}), 0)
  task = next_token()
  _, out = model.apply(variables, batch["inputs"], train=False, head=False)

  def counted(x):
    jax.debug.callback(lambda: calls.append(1))
    return out["unembed"](x)

  sums = jax.jit(lambda s, b: step_lib.scored_sums(task, s, counted, b))(out["pre_logits"], batch)
  jax.effects_barrier()
  assert len(calls) == 3
  assert float(sums["weight"]) == pytest.approx(13.0)


def test_a_batch_without_scored_tokens_sums_to_zero_without_a_nan():
  model = Llama(vocab_size=VOCAB, dim=32, num_layers=1, num_heads=4)
  batch = {**lm_batch(seed=4), "weights": np.zeros((B, T), np.float32), "_mask": np.ones(B, np.float32)}
  variables = step_lib.init_variables(model, ([batch["inputs"][:1]], {}), 0)
  sums = jax.jit(step_lib.make_eval_sums(model, next_token()))(variables, batch)
  assert float(sums["loss"]) == 0.0 and float(sums["weight"]) == 0.0 and float(sums["correct"]) == 0.0


@pytest.mark.parametrize("tied", [True, False])
def test_head_false_gives_the_head_as_a_function_of_the_final_states(tied):
  for model in (Llama(vocab_size=VOCAB, dim=32, num_layers=1, num_heads=4, tie_embeddings=tied),
                gemma3.Gemma3(vocab_size=VOCAB, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                              mlp_dim=64, tie_embeddings=tied)):
    tokens = np.arange(2 * 7, dtype=np.int32).reshape(2, 7)
    variables = model.init(jax.random.PRNGKey(0), tokens, train=False)
    logits, _ = model.apply(variables, tokens, train=False)
    none, out = model.apply(variables, tokens, train=False, head=False)
    assert none is None
    np.testing.assert_array_equal(np.asarray(out["unembed"](out["pre_logits"])), np.asarray(logits))


def test_an_adapter_on_the_lm_head_keeps_the_logits_of_every_token():
  base = Llama(vocab_size=VOCAB, dim=32, num_layers=1, num_heads=4)
  spec = dict(rank=2, alpha=2.0, dropout=0.0)
  on_head = lora_lib.LoRAModel(base, lora_lib.Spec(**spec, targets=("lm_head",), kernels=("params/lm_head/kernel",)))
  on_q = lora_lib.LoRAModel(base, lora_lib.Spec(**spec, targets=("q_proj",),
                                                kernels=("params/layers_0/self_attn/q_proj/kernel",)))
  assert not step_lib.splits_head(on_head, next_token())  # unembed would skip the adapter.
  assert step_lib.splits_head(on_q, next_token())


def test_task_logits_takes_scored_or_all_and_is_all_by_default():
  default = tasks.build(Reader(ml_collections.ConfigDict({"task": {"name": "next_token"}, "loss": {}})))
  assert not step_lib.splits_head(Llama(vocab_size=VOCAB), default)
  with pytest.raises(UserError, match=r"^config key 'task.logits' must be 'scored' or 'all', got 'some'$"):
    next_token("some")
