"""The Qwen2, Qwen3 and Mistral families against transformers' and peft's own outputs.

The directories are transformers' (random weights, tests/data/families/, made by
scripts/check_families.py with a tokenizer added by tests/family_dirs.py); reference.npz
holds what transformers and peft computed on them, peft_tensors.json the adapter tensors
peft's state dict has. Nothing here needs PyTorch."""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import family_dirs
from conftest import tiny_lm
from jaxtrain.errors import UserError
from jaxtrain.evals import loglikelihood
from jaxtrain.lm import families
from jaxtrain.lm import hf
from jaxtrain.lm import language_model as lm_lib
from jaxtrain.lm import peft
from jaxtrain.models import lora
from jaxtrain.models.llama import Llama, attention, flops_per_token, sharding_rules
from jaxtrain import train

REFERENCE = np.load(os.path.join(family_dirs.DATA, "reference.npz"))
with open(os.path.join(family_dirs.DATA, "peft_tensors.json"), encoding="utf-8") as _f:
  PEFT_TENSORS = json.load(_f)


@pytest.fixture(scope="module", params=family_dirs.FAMILIES)
def family_dir(request, tmp_path_factory):
  return request.param, family_dirs.make(str(tmp_path_factory.mktemp(request.param) / "model"), request.param)


@pytest.fixture(scope="module")
def loaded(family_dir):
  return family_dir[0], lm_lib.load(family_dir[1])


DROP = object()  # A config.json key with_config removes.


def with_config(directory, target, **changes):
  """A copy of HF directory `directory` at `target` with config.json's keys changed (DROP: removed)."""
  os.makedirs(target)
  for name in os.listdir(directory):
    if name != "config.json":
      os.symlink(os.path.join(directory, name), os.path.join(target, name))
  with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  config = {k: v for k, v in {**config, **changes}.items() if v is not DROP}
  with open(os.path.join(target, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f)
  return target


def test_logits_and_greedy_tokens_equal_transformers(loaded):
  family, lm = loaded
  assert lm.family.architecture == family_dirs.ARCHITECTURES[family] and lm.family.model_name == family
  got = lm.logits(family_dirs.TOKENS)
  want = REFERENCE[f"logits_{family}"]
  assert got.shape == want.shape == (2, 16, 300)
  assert np.abs(got - want).max() < 1e-4  # Measured 3e-6..5e-6 (docs/language_models.md).
  lm.sampler.eos_ids = ()  # transformers generated without stopping at EOS.
  greedy = lm.sampler.generate(family_dirs.PROMPTS, family_dirs.NEW_TOKENS)  # Batched: the second left-padded.
  assert greedy == [REFERENCE[f"greedy_{family}_{i}"].tolist() for i in range(len(family_dirs.PROMPTS))]


def test_the_modules_are_what_each_family_adds(loaded):
  family, lm = loaded
  module = lm.module
  assert (module.attention_bias, module.qk_norm, module.sliding_window) == {
      "qwen2": (True, False, None), "qwen3": (False, True, None), "mistral": (False, False, 8)}[family]
  attn = lm.variables["params"]["layers_1"]["self_attn"]
  norms = ["q_norm", "k_norm"] if module.qk_norm else []
  assert sorted(attn) == sorted(["q_proj", "k_proj", "v_proj", "o_proj"] + norms)
  assert ("bias" in attn["q_proj"]) == module.attention_bias and "bias" not in attn["o_proj"]
  if family == "qwen3":  # head_dim 32 with 4 heads of a 64-wide model: q is 128 wide.
    assert attn["q_proj"]["kernel"].shape == (64, 128) and attn["q_norm"]["scale"].shape == (32,)


def test_mistral_slides_its_window_as_transformers_does(tmp_path):
  """kv_idx > q_idx - window: 8 keys, the query's own included. One more or one fewer
  differs, and so does no window, but only from the window's end on."""
  directory = family_dirs.make(str(tmp_path / "mistral"), "mistral")
  want = REFERENCE["logits_mistral"]
  for window, same in ((None, False), (7, False), (9, False), (8, True)):
    got = lm_lib.load(with_config(directory, str(tmp_path / str(window)), sliding_window=window)).logits(
        family_dirs.TOKENS)
    assert np.abs(got - want)[:, :7].max() < 1e-4  # Within every window alike.
    assert (np.abs(got - want).max() < 1e-4) == same, window


def test_export_hf_writes_the_family_and_loads_back_identically(loaded, family_dir, tmp_path):
  family, lm = loaded
  out = str(tmp_path / "exported")
  lm.export_hf(out)
  with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  assert config["architectures"] == [family_dirs.ARCHITECTURES[family]] and config["model_type"] == family
  expected = {"qwen2": dict(use_sliding_window=False, tie_word_embeddings=True),
              "qwen3": dict(head_dim=32, attention_bias=False, use_sliding_window=False),
              "mistral": dict(sliding_window=8, tie_word_embeddings=False)}[family]
  assert {k: config[k] for k in expected} == expected
  assert "mlp_bias" not in config
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  assert load_file(os.path.join(out, "model.safetensors")).keys() == \
      load_file(os.path.join(family_dir[1], "model.safetensors")).keys()
  back = lm_lib.load(out)
  assert back.family is lm.family and back.module == lm.module
  np.testing.assert_array_equal(back.logits(family_dirs.TOKENS), lm.logits(family_dirs.TOKENS))


def test_a_scanned_model_reads_each_layers_biases_and_norms(loaded, family_dir):
  family, lm = loaded
  scanned = lm.module.clone(scan_layers=True)
  params = hf.load_params(family_dir[1], lm.family, lm_lib.abstract_variables(scanned, lm_lib.strategy_for())["params"])
  logits, _ = scanned.apply({"params": params}, family_dirs.TOKENS, train=False)
  np.testing.assert_allclose(np.asarray(logits), REFERENCE[f"logits_{family}"], atol=1e-4, rtol=0)


def test_the_lora_export_is_what_peft_reads(loaded, tmp_path):
  """Adapter names and shapes as peft's state dict has them; its logits as peft computed them
  (the script checks peft loading this very directory); the biases stay the base's."""
  family, lm = loaded
  module, params = family_dirs.lora_of(lm)
  out = str(tmp_path / "adapter")
  peft.save_peft(out, lm.family, module.base, lm_lib.EXAMPLE, module.spec, params)
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  tensors = load_file(os.path.join(out, "adapter_model.safetensors"))
  assert {name: list(value.shape) for name, value in tensors.items()} == PEFT_TENSORS[family]["tensors"]
  with open(os.path.join(out, "adapter_config.json"), encoding="utf-8") as f:
    config = json.load(f)
  assert config["target_modules"] == PEFT_TENSORS[family]["target_modules"] and config["bias"] == "none"
  merged = lora.merge(params, module.spec.scale)
  got = np.asarray(module.base.apply({"params": merged}, family_dirs.TOKENS[:1], train=False)[0])
  np.testing.assert_allclose(got, REFERENCE[f"peft_logits_{family}"], atol=1e-4, rtol=0)
  if module.attention_bias:
    np.testing.assert_array_equal(merged["layers_0"]["self_attn"]["q_proj"]["bias"],
                                  lm.variables["params"]["layers_0"]["self_attn"]["q_proj"]["bias"])
  back = peft.read_peft(out, lm.family, jax.tree.map(np.zeros_like, params))
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(back), jax.tree.leaves(params), strict=True):
    if lora.is_adapter(jax.tree_util.keystr(path, simple=True, separator="/")):
      np.testing.assert_array_equal(a, b)


def test_lm_eval_scores_a_qwen2_continuation_as_transformers_logits_do(tmp_path):
  """evals/loglikelihood.py needs nothing per family: its sum is transformers' log-probs'."""
  lm = lm_lib.load(family_dirs.make(str(tmp_path / "qwen2"), "qwen2"))
  tokens = family_dirs.TOKENS[0].tolist()
  pairs = [(tokens[:10], tokens[10:])]
  scorer = loglikelihood.Scorer(lm.module, lm.strategy, lm_lib.abstract_variables(lm.module, lm.strategy),
                                lm.context_length)
  sums, _ = scorer.score(lm.variables, pairs)
  logits = REFERENCE["logits_qwen2"][0].astype(np.float64)
  logprobs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want = sum(logprobs[i - 1, tokens[i]] for i in range(10, 16))
  assert sums[0] == pytest.approx(want, abs=1e-3) and want < -5


# ---- config.json in, and what each architecture cannot hold ------------------------------------


@pytest.mark.parametrize("family", family_dirs.FAMILIES)
def test_config_json_as_transformers_4_wrote_it_reads_the_same(family, tmp_path):
  directory = family_dirs.make(str(tmp_path / "five"), family)
  with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
    theta = json.load(f)["rope_parameters"]["rope_theta"]
  old = with_config(directory, str(tmp_path / "four"), rope_parameters=DROP, layer_types=DROP, rope_theta=theta,
                    rope_scaling=None)
  assert hf.read_config(old) == hf.read_config(directory)


def test_qwen_windows_are_read_as_transformers_reads_them(tmp_path):
  directory = family_dirs.make(str(tmp_path / "qwen2"), "qwen2")

  def window(name, **changes):
    return hf.read_config(with_config(directory, str(tmp_path / name), **changes))[1]["sliding_window"]

  assert window("off", sliding_window=16, max_window_layers=0) is None  # use_sliding_window false: no window.
  # transformers' default window, where config.json names none.
  assert window("default", use_sliding_window=True, sliding_window=DROP, max_window_layers=0, layer_types=DROP) == 4096
  mistral = family_dirs.make(str(tmp_path / "mistral"), "mistral")
  assert hf.read_config(with_config(mistral, str(tmp_path / "m"), sliding_window=DROP))[1]["sliding_window"] == 4096
  assert window("all", use_sliding_window=True, sliding_window=16, max_window_layers=0, layer_types=DROP) == 16
  assert window("none", use_sliding_window=True, sliding_window=16, max_window_layers=2, layer_types=DROP) is None
  assert window("typed", use_sliding_window=True, sliding_window=16,
                layer_types=["sliding_attention", "sliding_attention"]) == 16
  with pytest.raises(UserError, match=r"slides the attention window in 1 of 2 layers \(max_window_layers=1, "
                                      r"layer_types\); jaxtrain's model has one window for all layers or none"):
    window("mixed", use_sliding_window=True, sliding_window=16, max_window_layers=1, layer_types=DROP)


@pytest.mark.parametrize("family,changes,message", [
    ("qwen3", dict(attention_bias=True), "sets attention_bias=True; Qwen3 then biases o_proj too"),
    ("qwen2", dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}),
     "asks for rope scaling 'yarn'; jaxtrain implements default, llama3, linear"),
    ("mistral", dict(hidden_act="gelu"), "sets hidden_act='gelu'"),
    ("mistral", dict(sliding_window=0), "model.sliding_window must be a number of tokens >= 1"),
    ("qwen3", dict(head_dim=DROP, hidden_size=32), r"weight model.embed_tokens.weight has shape \[300, 64\]")])
def test_what_a_family_cannot_hold_is_refused_in_one_line(family, changes, message, tmp_path):
  directory = with_config(family_dirs.make(str(tmp_path / "model"), family), str(tmp_path / "changed"), **changes)
  with pytest.raises(UserError, match=message):
    lm_lib.load(directory)


def test_qwen3_without_head_dim_has_transformers_default_of_128(tmp_path):
  directory = with_config(family_dirs.make(str(tmp_path / "model"), "qwen3"), str(tmp_path / "no"), head_dim=DROP)
  assert hf.read_config(directory)[1]["head_dim"] == 128


def test_a_module_the_architecture_cannot_hold_is_not_exported(loaded, tmp_path):
  family, lm = loaded
  family_of = lambda name: families.for_model(name, "the test")  # noqa: E731
  plain = Llama(vocab_size=300, dim=64, num_layers=1, num_heads=4)
  wrong = {"qwen2": (plain, "a Qwen2ForCausalLM has attention_bias=True, this model attention_bias=False: train it "
                            "with model.attention_bias=True to export it as Qwen2"),
           "qwen3": (plain, "a Qwen3ForCausalLM has qk_norm=True, this model qk_norm=False"),
           "mistral": (plain.clone(attention_bias=True), "a MistralForCausalLM has no attention_bias, but this model "
                                                         "has model.attention_bias=True: it has no Mistral form")}
  module, message = wrong[family]
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32), train=False))
  params = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes["params"])
  with pytest.raises(UserError, match=re.escape(message)):
    hf.save(str(tmp_path / "out"), family_of(family), module, params, lm.tokenizer, 128)
  assert not os.path.exists(tmp_path / "out") and os.listdir(tmp_path) == []


def test_a_llama_module_with_another_familys_field_is_not_exported_as_llama(loaded, tmp_path):
  _, lm = loaded
  for field, value, family in (("attention_bias", True, "qwen2"), ("qk_norm", True, "qwen3"),
                               ("sliding_window", 4, "mistral")):
    module = Llama(vocab_size=300, dim=64, num_layers=1, num_heads=4, **{field: value})
    shapes = jax.eval_shape(lambda m=module: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32), train=False))
    params = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes["params"])
    message = f"a LlamaForCausalLM has no {field}, which this model sets: train it as model.name='{family}'"
    with pytest.raises(UserError, match=re.escape(message)):
      hf.save(str(tmp_path / "out"), families.for_model("llama", "the test"), module, params, lm.tokenizer, 128)
  assert os.listdir(tmp_path) == []


def test_each_family_goes_through_gguf_and_back_unchanged(loaded, tmp_path, monkeypatch):
  """Qwen2 and Qwen3 as llama.cpp's 'qwen2'/'qwen3' (biases, q/k norms, no row permutation);
  Mistral as 'llama', its window kept in the metadata and read back as Mistral's."""
  monkeypatch.setenv("JAXTRAIN_CACHE", str(tmp_path / "cache"))
  family, lm = loaded
  path = str(tmp_path / f"{family}.gguf")
  lm.export_gguf(path)
  back = lm_lib.load(path)
  assert back.family is lm.family and back.module == lm.module
  np.testing.assert_array_equal(back.logits(family_dirs.TOKENS), lm.logits(family_dirs.TOKENS))
  from jaxtrain.lm import gguf as gguf_lib  # pylint: disable=import-outside-toplevel
  f = gguf_lib.File(path)
  assert f.arch == {"qwen2": "qwen2", "qwen3": "qwen3", "mistral": "llama"}[family]
  names = set(f.tensors)
  assert ("blk.0.attn_q.bias" in names) == (family == "qwen2")
  assert ("blk.0.attn_q_norm.weight" in names) == (family == "qwen3")
  assert f.arch_value("attention.sliding_window") == (family_dirs.WINDOW if family == "mistral" else None)


# ---- The module's new fields in training --------------------------------------------------------


def test_the_dropout_path_keeps_the_window():
  """attention() (attention dropout on) gets the window through the mask, as the fused call."""
  module = Llama(vocab_size=40, dim=32, num_layers=1, num_heads=4, num_kv_heads=2, sliding_window=3)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 40, (2, 10)), jnp.int32)
  variables = jax.jit(lambda: module.init(jax.random.PRNGKey(0), tokens, train=False))()
  apply = jax.jit(lambda t: module.apply(variables, t, train=False)[0])
  rng = np.random.default_rng(1)
  q, k, v = (jnp.asarray(rng.standard_normal((2, 10, h, 8)), jnp.float32) for h in (4, 2, 2))
  keys = jnp.arange(10)
  mask = jnp.broadcast_to(keys[None, :] > keys[:, None] - 3, (2, 1, 10, 10))
  both = jax.jit(lambda q, k, v: (attention(q, k, v, mask, True, lambda p: p),
                                  jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True)))
  np.testing.assert_allclose(*both(q, k, v), atol=1e-6)
  # And the model's own mask is that band: a token 3 back no longer moves the logits.
  changed = np.abs(np.asarray(apply(tokens.at[:, 4].set((tokens[:, 4] + 1) % 40)) - apply(tokens))).max(axis=(0, 2)) > 0
  assert changed.tolist() == [False] * 4 + [True] * 3 + [False] * 3


def test_sharding_rules_split_the_biases_and_flops_count_the_window():
  model = Llama(vocab_size=64, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=48, attention_bias=True,
                qk_norm=True)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32), train=False))
  names = {"params/" + jax.tree_util.keystr(p, simple=True, separator="/"): x.shape
           for p, x in jax.tree_util.tree_leaves_with_path(shapes["params"])}
  rules = sharding_rules(attention_bias=True)
  assert all(any(re.search(pattern, name) for name in names) for pattern, _ in rules)
  biases = {name: spec for name in names for pattern, spec in rules if re.search(pattern, name) and "bias" in name}
  assert sorted(biases) == [f"params/layers_{i}/self_attn/{p}_proj/bias" for i in (0, 1) for p in "kqv"]
  assert set(biases.values()) == {("tensor",)}
  assert not any(re.search(pattern, name) for pattern, _ in rules for name in names if "norm" in name)
  full = flops_per_token(model, 128)
  assert flops_per_token(model.clone(sliding_window=128), 128) == full  # A window as long as the text: no change.
  # Window 32 of 128: 32 - 32^2 / 256 = 28 keys per query on average, against 64.
  assert full - flops_per_token(model.clone(sliding_window=32), 128) == 6 * 2 * 4 * 8 * (128 - 56)


def test_a_qwen3_shaped_run_with_a_window_trains_and_exports_as_qwen3(tfds_dir, corpus, tmp_path):
  """model.name='qwen3' is the Llama module (its fields from the config); the run knows its
  family, so export writes Qwen3's config with the window."""
  config = tiny_lm(corpus)
  config.total_steps, config.log_every_steps = 12, 4
  config.evals.val.every_steps = config.checkpoint.every_steps = 12
  config.model.update(name="qwen3", qk_norm=True, sliding_window=4)
  workdir = str(tmp_path / "run")
  train.run(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    losses = [row["train/loss"] for row in map(json.loads, f) if "train/loss" in row]
  assert len(losses) == 3 and all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.2
  lm = lm_lib.load(workdir)
  assert lm.family.architecture == "Qwen3ForCausalLM" and lm.module.sliding_window == 4
  assert lm.variables["params"]["layers_0"]["self_attn"]["k_norm"]["scale"].shape == (8,)
  out = str(tmp_path / "exported")
  lm.export_hf(out)
  with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  assert (config["use_sliding_window"], config["sliding_window"], config["max_window_layers"]) == (True, 4, 0)
  tokens = np.asarray([lm.tokenizer.encode("def f(x):\n    return x + 1\n")[:20]])
  np.testing.assert_array_equal(lm_lib.load(out).logits(tokens), lm.logits(tokens))
