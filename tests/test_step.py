"""The train state, the pure train and eval steps, and the single-device Strategy."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxtrain.config import Reader
from jaxtrain.errors import UserError
from jaxtrain import models
from jaxtrain import parallel
from jaxtrain import step as step_lib
from jaxtrain import tasks
from jaxtrain.training import optim

NUM_CLASSES = 4
BATCH = 8
TOTAL_STEPS = 60


def build(model, optimizer=None, schedule=None, seed=0):
  """(model, tx, task, lr_fn, state) from config sections, as train.py builds them."""
  cfg = Reader(ml_collections.ConfigDict({
      "model": {"num_classes": NUM_CLASSES, **model},
      "loss": {"name": "softmax_xent"},
      "optimizer": optimizer or {"name": "adam", "lr": 1e-2},
      "schedule": schedule or {"name": "constant"},
  }))
  model = models.build(cfg.model)
  task = tasks.build(cfg)
  tx, lr_fn = optim.build(cfg.optimizer, cfg.schedule, total_steps=TOTAL_STEPS, steps_per_epoch=10,
                          batch_size=BATCH)
  state = step_lib.create_state(model, tx, ([np.zeros((1, 4, 4, 1), np.float32)], {}), seed)
  return model, tx, task, lr_fn, state


def make_batch(seed=0, batch=BATCH):
  rng = np.random.default_rng(seed)
  return {"image": rng.normal(size=(batch, 4, 4, 1)).astype(np.float32),
          "labels": np.eye(NUM_CLASSES, dtype=np.float32)[rng.integers(0, NUM_CLASSES, batch)]}


MLP = {"name": "mlp", "hidden": (32,)}
MLP_DROPOUT = {"name": "mlp", "hidden": (32,), "dropout": 0.5}
CNN_BN = {"name": "cnn", "features": (4,), "pool_every": 1, "dense": 8, "batch_norm": True}


def as_numpy(tree):
  return jax.tree.map(np.asarray, tree)


def assert_trees_equal(a, b):
  a, b = as_numpy(a), as_numpy(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def copy(tree):
  return jax.tree.map(jnp.array, tree)


@pytest.fixture(scope="module")
def mlp_dropout():
  model, tx, task, lr_fn, state = build(MLP_DROPOUT, schedule={"name": "cosine", "warmup_steps": 4})
  return state, jax.jit(step_lib.make_train_step(model, task, tx, lr_fn)), lr_fn


# ---------------------------------------------------------------------------------------
# create_state.
# ---------------------------------------------------------------------------------------


def test_create_state_starts_at_step_zero():
  _, tx, _, _, state = build(MLP)
  assert state.step.shape == () and state.step.dtype == jnp.int32 and int(state.step) == 0
  assert set(state.params) == {"Dense_0", "head"}
  assert state.params["Dense_0"]["kernel"].shape == (16, 32)
  assert state.params["head"]["kernel"].shape == (32, NUM_CLASSES)
  assert_trees_equal(state.opt_state, tx.init(state.params))
  assert state.model_state == {}
  assert state.rng.shape == (2,) and state.rng.dtype == jnp.uint32


def test_create_state_holds_batch_stats_as_model_state():
  _, _, _, _, state = build(CNN_BN)
  assert set(state.model_state) == {"batch_stats"}
  assert "batch_stats" not in state.params
  stats = state.model_state["batch_stats"]["BatchNorm_0"]
  np.testing.assert_array_equal(stats["mean"], np.zeros(4))
  np.testing.assert_array_equal(stats["var"], np.ones(4))


def test_create_state_depends_only_on_the_seed():
  assert_trees_equal(build(MLP, seed=3)[-1], build(MLP, seed=3)[-1])
  a, b = build(MLP, seed=3)[-1], build(MLP, seed=4)[-1]
  assert not np.array_equal(a.params["head"]["kernel"], b.params["head"]["kernel"])


# ---------------------------------------------------------------------------------------
# make_train_step.
# ---------------------------------------------------------------------------------------


def test_train_step_is_pure(mlp_dropout):
  state, train_step, _ = mlp_dropout
  batch = make_batch()
  before = as_numpy(state)
  first = train_step(copy(state), copy(batch))
  second = train_step(copy(state), copy(batch))
  assert_trees_equal(first, second)
  assert_trees_equal(state, before)  # The input state is left as it was.


def test_train_step_increments_step(mlp_dropout):
  state, train_step, _ = mlp_dropout
  for expected in (1, 2, 3):
    state, _ = train_step(state, make_batch())
    assert int(state.step) == expected


def test_train_step_metrics(mlp_dropout):
  state, train_step, _ = mlp_dropout
  _, metrics = train_step(state, make_batch())
  assert set(metrics) == {"loss", "accuracy", "grad_norm", "param_norm", "lr"}
  assert all(m.shape == () for m in metrics.values())
  assert float(metrics["loss"]) > 0
  assert 0.0 <= float(metrics["accuracy"]) <= 1.0
  assert float(metrics["grad_norm"]) > 0


def test_train_step_metrics_match_a_manual_computation():
  model, tx, task, lr_fn, state = build(MLP)
  batch = make_batch()
  _, metrics = jax.jit(step_lib.make_train_step(model, task, tx, lr_fn))(state, batch)

  def loss_of(params):
    logits, _ = model.apply({"params": params}, batch["image"], train=True)
    return task.loss_fn(logits, batch["labels"]).mean(), logits

  (loss, logits), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
  accuracy = np.mean(np.argmax(logits, -1) == np.argmax(batch["labels"], -1))
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["accuracy"], accuracy)
  np.testing.assert_allclose(metrics["grad_norm"], optax.global_norm(grads), rtol=1e-5)


def test_lr_metric_is_the_schedule_at_the_step_before_the_update(mlp_dropout):
  state, train_step, lr_fn = mlp_dropout
  reported = []
  for _ in range(8):
    state, metrics = train_step(state, make_batch())
    reported.append(float(metrics["lr"]))
  expected = [float(lr_fn(jnp.int32(s))) for s in range(8)]
  np.testing.assert_allclose(reported, expected, rtol=1e-6)
  assert reported[0] == 0.0 and reported[2] == pytest.approx(0.5e-2)


def test_first_warmup_step_leaves_params_unchanged(mlp_dropout):
  # The optimizer's own step count agrees with the reported lr: zero at step 0.
  state, train_step, _ = mlp_dropout
  new_state, _ = train_step(state, make_batch())
  assert_trees_equal(new_state.params, state.params)
  later, _ = train_step(new_state, make_batch())
  assert not np.array_equal(later.params["head"]["kernel"], new_state.params["head"]["kernel"])


def test_dropout_mask_changes_with_the_step(mlp_dropout):
  state, train_step, _ = mlp_dropout
  batch = make_batch()
  losses_ = [float(train_step(state.replace(step=jnp.int32(s)), batch)[1]["loss"]) for s in (0, 1, 2, 0)]
  assert losses_[0] != losses_[1] and losses_[1] != losses_[2] and losses_[0] != losses_[2]
  assert losses_[0] == losses_[3]


def test_dropout_mask_changes_with_the_state_rng(mlp_dropout):
  state, train_step, _ = mlp_dropout
  batch = make_batch()
  other = state.replace(rng=jax.random.PRNGKey(123))
  assert float(train_step(state, batch)[1]["loss"]) != float(train_step(other, batch)[1]["loss"])


def test_loss_falls_on_a_fixed_batch():
  model, tx, task, lr_fn, state = build(MLP, optimizer={"name": "adam", "lr": 1e-2})
  train_step = jax.jit(step_lib.make_train_step(model, task, tx, lr_fn))
  batch = make_batch()
  state, metrics = train_step(state, batch)
  first = float(metrics["loss"])
  for _ in range(49):
    state, metrics = train_step(state, batch)
  assert float(metrics["loss"]) < 0.5 * first
  assert float(metrics["accuracy"]) == 1.0


def test_batch_stats_update_in_train_mode():
  model, tx, task, lr_fn, state = build(CNN_BN)
  batch = make_batch()
  new_state, _ = jax.jit(step_lib.make_train_step(model, task, tx, lr_fn))(state, batch)
  # Running mean <- 0.9 * 0 + 0.1 * the batch mean of the first (bias-free) convolution.
  conv = nn.Conv(4, (3, 3), use_bias=False).apply({"params": state.params["Conv_0"]}, batch["image"])
  stats = new_state.model_state["batch_stats"]["BatchNorm_0"]
  np.testing.assert_allclose(stats["mean"], 0.1 * conv.mean((0, 1, 2)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * conv.var((0, 1, 2)), rtol=1e-4)


# ---------------------------------------------------------------------------------------
# make_eval_sums.
# ---------------------------------------------------------------------------------------


def test_eval_step_sums_only_real_rows():
  model, _, task, _, state = build(CNN_BN)
  batch = make_batch(seed=1)
  mask = np.array([1, 1, 0, 1, 0, 1, 1, 0], np.float32)
  eval_step = jax.jit(step_lib.make_eval_sums(model, task))
  sums = eval_step(step_lib.variables_of(state), {**batch, "_mask": mask})

  real = mask == 1
  logits, _ = model.apply({"params": state.params, **state.model_state}, batch["image"][real], train=False)
  per_example = task.loss_fn(logits, batch["labels"][real])
  correct = np.sum(np.argmax(logits, -1) == np.argmax(batch["labels"][real], -1))
  assert int(sums["count"]) == 5 and float(sums["weight"]) == 5.0
  assert float(sums["correct"]) == correct
  np.testing.assert_allclose(sums["loss"], per_example.sum(), rtol=1e-5)
  assert sums["count"].dtype == jnp.int32


def test_eval_step_ignores_the_content_of_padding_rows():
  model, _, task, _, state = build(MLP)
  eval_step = jax.jit(step_lib.make_eval_sums(model, task))
  batch = {**make_batch(seed=2), "_mask": np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32)}
  other = {**batch, "image": batch["image"].copy(), "labels": batch["labels"][::-1].copy()}
  other["image"][5:] = 100.0
  other["labels"][:5] = batch["labels"][:5]
  variables = step_lib.variables_of(state)
  assert_trees_equal(eval_step(variables, batch), eval_step(variables, other))


def test_eval_step_with_no_padding_counts_everything():
  model, _, task, _, state = build(MLP)
  sums = jax.jit(step_lib.make_eval_sums(model, task))(step_lib.variables_of(state),
                                                       {**make_batch(), "_mask": np.ones(BATCH, np.float32)})
  assert int(sums["count"]) == BATCH


# ---------------------------------------------------------------------------------------
# Strategy on the single CPU device.
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def strategy():
  return parallel.Strategy(Reader({}))


def test_strategy_mesh_covers_every_device(strategy):
  assert strategy.mesh.axis_names == ("data", "fsdp", "tensor")
  assert strategy.mesh.devices.size == jax.device_count()


@pytest.mark.parametrize("batch_size", [1, 2, 8, 128])
def test_check_batch_size_accepts_multiples_of_the_device_count(strategy, batch_size):
  strategy.check_batch_size(batch_size * jax.device_count(), "input.batch_size")


@pytest.mark.parametrize("batch_size", [0, -8, 8.0, 2.5, "8", None])
def test_check_batch_size_rejects_non_positive_and_non_integers(strategy, batch_size):
  with pytest.raises(UserError, match="input.batch_size") as err:
    strategy.check_batch_size(batch_size, "input.batch_size")
  assert "positive multiple" in str(err.value)


def test_check_batch_size_rejects_bool(strategy):
  with pytest.raises(UserError):
    strategy.check_batch_size(True, "input.batch_size")


def test_strategy_init_matches_create_state(strategy):
  model, tx, _, _, state = build(MLP)
  example = np.zeros((1, 4, 4, 1), np.float32)
  create = lambda: step_lib.create_state(model, tx, ([example], {}), 0)
  placed = strategy.init(create, strategy.abstract_state(create))
  assert_trees_equal(placed, state)
  assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(placed))


def test_compiled_train_step_donates_the_train_state(strategy):
  model, tx, task, lr_fn, _ = build(MLP)
  example = np.zeros((1, 4, 4, 1), np.float32)
  create = lambda: step_lib.create_state(model, tx, ([example], {}), 0)
  state = strategy.init(create, strategy.abstract_state(create))
  train_step = strategy.compile_train_step(step_lib.make_train_step(model, task, tx, lr_fn),
                                           strategy.abstract_state(create), make_batch())
  batch = strategy.shard(make_batch())
  new_state, metrics = train_step(state, batch)
  assert all(x.is_deleted() for x in jax.tree.leaves(state.params))
  assert not any(x.is_deleted() for x in jax.tree.leaves(batch))
  newer_state, _ = train_step(new_state, batch)  # The returned state is live.
  assert int(newer_state.step) == 2
  assert np.isfinite(float(metrics["loss"]))


def test_compiled_eval_step_keeps_the_state(strategy):
  model, tx, task, _, _ = build(MLP)
  example = np.zeros((1, 4, 4, 1), np.float32)
  create = lambda: step_lib.create_state(model, tx, ([example], {}), 0)
  state = strategy.init(create, strategy.abstract_state(create))
  local_batch = {**make_batch(), "_mask": np.ones(BATCH, np.float32)}
  abstract = step_lib.variables_of(strategy.abstract_state(create))
  eval_step = strategy.compile_eval(step_lib.make_eval_sums(model, task), abstract, local_batch)
  batch = strategy.shard(local_batch)
  assert int(eval_step(step_lib.variables_of(state), batch)["count"]) == BATCH
  assert not any(x.is_deleted() for x in jax.tree.leaves(state))


def test_skip_nonfinite_leaves_the_state_but_advances_the_step():
  model, tx, task, lr_fn, state = build(MLP)
  step = jax.jit(step_lib.make_train_step(model, task, tx, lr_fn, skip_nonfinite=True))
  batch = make_batch()
  bad = {**batch, "image": np.full_like(batch["image"], np.nan)}
  new_state, metrics = step(state, bad)
  assert int(new_state.step) == int(state.step) + 1 and float(metrics["skipped"]) == 1.0
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(new_state.params), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  good_state, good = step(new_state, batch)
  assert float(good["skipped"]) == 0.0 and np.isfinite(float(good["loss"]))
  assert not all(np.array_equal(np.asarray(a), np.asarray(b))
                 for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(good_state.params)))


# ---------------------------------------------------------------------------------------
# Weighted losses, gradient accumulation, mixed precision.
# ---------------------------------------------------------------------------------------


def weighted_batch(seed=3, batch=16):
  weights = np.random.default_rng(seed).uniform(0, 2, batch).astype(np.float32)
  weights[::5] = 0.0  # Some examples (think: padding tokens) do not count at all.
  return {**make_batch(seed, batch), "weights": weights}


def test_the_loss_is_the_weighted_mean_over_the_batch():
  model, tx, task, lr_fn, state = build(MLP)
  batch = weighted_batch()
  _, metrics = jax.jit(step_lib.make_train_step(model, task, tx, lr_fn))(state, batch)
  logits, _ = model.apply({"params": state.params}, batch["image"], train=True)
  per_example = np.asarray(task.loss_fn(logits, batch["labels"]))
  np.testing.assert_allclose(float(metrics["loss"]), np.sum(per_example * batch["weights"]) / batch["weights"].sum(),
                             rtol=1e-6)


@pytest.mark.parametrize("accumulate_steps", [2, 4, 8])
@pytest.mark.parametrize("weighted", [False, True])
def test_accumulating_microbatches_equals_the_large_batch(accumulate_steps, weighted):
  model, tx, task, lr_fn, state = build(MLP)
  batch = weighted_batch() if weighted else make_batch(batch=16)
  large = jax.jit(step_lib.make_train_step(model, task, tx, lr_fn))
  micro = jax.jit(step_lib.make_train_step(model, task, tx, lr_fn, accumulate_steps=accumulate_steps))
  state_large, state_micro = state, copy(state)
  for _ in range(3):
    state_large, metrics_large = large(state_large, batch)
    state_micro, metrics_micro = micro(state_micro, batch)
    for key in ("loss", "accuracy", "grad_norm", "lr"):
      np.testing.assert_allclose(float(metrics_micro[key]), float(metrics_large[key]), rtol=1e-5, err_msg=key)
  for a, b in zip(jax.tree.leaves(state_large.params), jax.tree.leaves(state_micro.params), strict=True):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)


def test_accumulation_is_not_the_same_as_one_microbatch():
  """The check above can fail: a step on the first microbatch alone differs."""
  model, tx, task, lr_fn, state = build(MLP)
  batch = weighted_batch()
  _, full = jax.jit(step_lib.make_train_step(model, task, tx, lr_fn, accumulate_steps=4))(state, batch)
  first = jax.tree.map(lambda x: x[::4], batch)  # Microbatch 0 takes examples 0, 4, 8, ...
  _, alone = jax.jit(step_lib.make_train_step(model, task, tx, lr_fn))(copy(state), first)
  assert abs(float(full["loss"]) - float(alone["loss"])) > 1e-3


def test_bfloat16_computes_in_bfloat16_and_keeps_float32_params():
  model, tx, task, lr_fn, state = build({**MLP, "dtype": "bfloat16"})
  step = jax.jit(step_lib.make_train_step(model, task, tx, lr_fn))
  hlo = step.lower(state, make_batch()).as_text()
  assert any("dot_general" in line and "bf16" in line for line in hlo.splitlines())
  new_state, metrics = step(state, make_batch())
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new_state.params))
  assert metrics["loss"].dtype == jnp.float32
  _, _, _, _, state32 = build(MLP)
  _, metrics32 = jax.jit(step_lib.make_train_step(*[build(MLP)[i] for i in (0, 2, 1, 3)]))(state32, make_batch())
  # The same model to bfloat16's precision (8 bits of mantissa), not to float32's.
  assert float(metrics["loss"]) == pytest.approx(float(metrics32["loss"]), rel=2e-2)
  assert float(metrics["loss"]) != float(metrics32["loss"])


class TokenTagger(nn.Module):
  """Per-token logits [batch, tokens, classes], as a sequence model's."""

  @nn.compact
  def __call__(self, x, *, train):
    return nn.Dense(NUM_CLASSES)(nn.relu(nn.Dense(16)(x))), {}


@pytest.mark.parametrize("accumulate_steps", [2, 4])
def test_accumulation_with_token_weights_divides_once_by_all_the_tokens(accumulate_steps):
  """Padding tokens weigh 0 and sequences have different lengths: averaging per-microbatch
  means would be wrong; summing losses and weights and dividing once is exact."""
  rng = np.random.default_rng(5)
  batch = {"image": rng.normal(size=(8, 6, 3)).astype(np.float32),
           "labels": np.eye(NUM_CLASSES, dtype=np.float32)[rng.integers(0, NUM_CLASSES, (8, 6))],
           "weights": (np.arange(6)[None, :] < rng.integers(1, 7, (8, 1))).astype(np.float32)}  # Lengths 1-6.
  model = TokenTagger()
  tx = optax.sgd(0.5)
  task = tasks.build(Reader(ml_collections.ConfigDict({"loss": {"name": "softmax_xent"}})))
  state = step_lib.create_state(model, tx, ([batch["image"][:1]], {}), 0)
  lr_fn = lambda step: 0.5
  large, large_metrics = jax.jit(step_lib.make_train_step(model, task, tx, lr_fn))(state, batch)
  micro, micro_metrics = jax.jit(step_lib.make_train_step(
      model, task, tx, lr_fn, accumulate_steps=accumulate_steps))(copy(state), batch)
  logits, _ = model.apply({"params": state.params}, batch["image"], train=True)
  per_token = np.asarray(task.loss_fn(logits, batch["labels"]))
  expected = np.sum(per_token * batch["weights"]) / batch["weights"].sum()
  np.testing.assert_allclose(float(large_metrics["loss"]), expected, rtol=1e-6)
  np.testing.assert_allclose(float(micro_metrics["loss"]), expected, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(large.params), jax.tree.leaves(micro.params), strict=True):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)
  # The mean of the microbatches' own means is not the same number:
  means = [np.sum((per_token * batch["weights"])[i::accumulate_steps]) / batch["weights"][i::accumulate_steps].sum()
           for i in range(accumulate_steps)]
  assert abs(np.mean(means) - expected) > 1e-4
