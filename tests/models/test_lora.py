"""`config.lora`: adapters on the targeted Dense kernels of a language model started from a
Hugging Face directory (tests/hf_dirs.py). Step 0 computes the base model exactly; only
the adapters train and hold optimizer state, the base comes out bit-identical; the merged
model (`jaxtrain.lm.load`, `--format=hf`) gives the adapted model's logits, and the
`--format=peft` export gives PEFT's own (tests/data/peft_*, written by scripts/check_peft.py
with transformers and peft, which these tests do not need)."""

import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

import hf_dirs
from conftest import ROOT, read_checkpoint, tiny_lm
from jaxtrain.config import Reader
from jaxtrain.errors import UserError
from jaxtrain.lm import export as export_lib
from jaxtrain.lm import families
from jaxtrain.lm import hf as hf_lib
from jaxtrain.lm import language_model as lm_lib
from jaxtrain.lm import peft
from jaxtrain import models
from jaxtrain.models import lora
from jaxtrain import train
from jaxtrain.training import build as build_lib

LLAMA = families.for_model("llama", "the tests")
VARIANT = "untied_llama3"  # An lm_head to adapt too.
TARGETS = ("q_proj", "v_proj", "mlp/down_proj", "lm_head", "layers_1/self_attn/k_proj")  # The last: one layer.


def lora_config(corpus, hf, scan=False, **lora_kwargs):
  """tests/tiny_lm.py fine-tuning the HF directory `hf` with LoRA for 10 steps."""
  _, kwargs, _ = hf_lib.read_config(hf)
  config = tiny_lm(corpus)
  config.total_steps = 10
  config.evals.val.every_steps = 10
  config.input.data.tokenizer.vocab_size = 280  # At most the model's 300 ids.
  config.model = dict(name="llama", scan_layers=scan, **kwargs)
  config.init_from = dict(hf_dir=hf)
  config.optimizer.lr = 1e-2
  config.lora = dict(rank=4, alpha=8.0, targets=TARGETS[:-1] if scan else TARGETS, **lora_kwargs)
  return config


def flat(tree):
  return {jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(x)
          for p, x in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
  return hf_dirs.make(str(tmp_path_factory.mktemp("hf") / "model"), VARIANT)


@pytest.fixture(scope="module")
def run(tfds_dir, corpus, hf, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("lora_run"))
  train.run(lora_config(corpus, hf), workdir)
  return workdir


def started(config):
  exp = build_lib.build(config)
  state = exp.strategy.init(exp.create, exp.abstract_state)
  return exp.init_from.apply(state), exp


@pytest.mark.parametrize("scan", [False, True])
def test_step_0_computes_the_base_model_exactly(tfds_dir, corpus, hf, scan):
  state, exp = started(lora_config(corpus, hf, scan=scan))
  module = exp.model.module
  assert isinstance(module, lora.LoRAModel)
  names = flat(state.params)
  adapted = sorted(n.rsplit("/", 1)[0] for n in names if n.endswith("lora_A"))
  layers = ["layers"] if scan else ["layers_0", "layers_1", "layers_2"]
  assert adapted == sorted(["lm_head"] + ([] if scan else ["layers_1/self_attn/k_proj"]) + [
      f"{layer}/{m}" for layer in layers for m in ("self_attn/q_proj", "self_attn/v_proj", "mlp/down_proj")])
  assert not any(names[n].any() for n in names if n.endswith("lora_B"))  # B starts at zero.
  tokens = hf_dirs.TOKENS
  got = module.apply({"params": state.params}, tokens, train=False)[0]
  base = lm_lib.load(hf, parallel_config=None)
  want = base.module.clone(scan_layers=scan).apply(
      {"params": {k: v for k, v in _strip(state.params).items()}}, tokens, train=False)[0]
  np.testing.assert_array_equal(got, want)
  np.testing.assert_allclose(got, base.logits(tokens), atol=1e-5, rtol=0)


def _strip(params):
  if not isinstance(params, dict):
    return params
  return {k: _strip(v) for k, v in params.items() if k not in lora.ADAPTERS}


def test_only_the_adapters_train_and_hold_optimizer_state(run, hf):
  saved = read_checkpoint(run, 10)
  params = flat(saved["params"])
  base = flat(lm_lib.load(hf).variables["params"])
  for name, value in base.items():
    np.testing.assert_array_equal(params[name], value, err_msg=name)  # Frozen: bit-identical.
  assert all(params[n].any() for n in params if n.endswith("lora_B"))  # The adapters moved.
  moments = [n for n in flat(saved["opt_state"]) if "/mu/" in n or "/nu/" in n]
  assert moments and all(lora.is_adapter(n) for n in moments)
  assert len(moments) == 2 * len([n for n in params if lora.is_adapter(n)])


def test_lora_mistakes_are_one_line_and_write_nothing(tfds_dir, corpus, hf, tmp_path):
  for change, message in ((("q_prj",), r"lora.targets\[0\] pattern 'q_prj' matches no array of the Dense kernels "
                                       r"\(paths look like 'params/layers_0/.*/kernel'\); fix the pattern"),
                          (("q_proj", "norm"), r"lora.targets\[1\] pattern 'norm' matches no array"),
                          ((), r"config key 'lora.targets' must be a tuple of regexes"),
                          (dict(rank=0), r"config key 'lora.rank' must be at least 1, got 0"),
                          (dict(dropout=1.0), r"config key 'lora.dropout' must be a rate in \[0, 1\), got 1.0"),
                          (dict(base_dtype="int8"), r"config key 'lora.base_dtype' must be 'float32', 'bfloat16'"),
                          (dict(rnak=4), r"unknown config key 'lora.rnak' \(did you mean 'lora.rank'\?\)")):
    config = lora_config(corpus, hf)
    if isinstance(change, dict):
      config.lora.update(change)
    else:
      config.lora.targets = change
    with pytest.raises(UserError, match=message):
      train.run(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def test_a_bfloat16_base_stays_bfloat16_and_frozen(tfds_dir, corpus, hf, tmp_path):
  config = lora_config(corpus, hf, base_dtype="bfloat16", dropout=0.1)
  config.total_steps, config.schedule.warmup_steps, config.evals.val.every_steps = 4, 1, 4
  train.run(config, str(tmp_path / "run"))
  saved = flat(read_checkpoint(str(tmp_path / "run"), 4)["params"])
  base = flat(lm_lib.load(hf).variables["params"])
  for name, value in base.items():
    assert saved[name].dtype == jax.numpy.bfloat16, name
    np.testing.assert_array_equal(saved[name], value.astype(jax.numpy.bfloat16), err_msg=name)
  assert all(saved[n].dtype == np.float32 for n in saved if lora.is_adapter(n))


def unmerged_logits(run, tokens):
  """The LoRA model itself (adapters beside the kernels) on the run's newest checkpoint."""
  lm = lm_lib.load(run)
  spec, params = lm.lora
  return np.asarray(lora.LoRAModel(lm.module, spec).apply({"params": params}, tokens, train=False)[0])


def test_load_merges_the_adapters_into_a_plain_llama(run):
  lm = lm_lib.load(run)
  assert not isinstance(lm.module, lora.LoRAModel) and "LoRA merged" in lm.source
  assert not any(lora.is_adapter(n) for n in flat(lm.variables["params"]))
  want = unmerged_logits(run, hf_dirs.TOKENS)
  got = lm.logits(hf_dirs.TOKENS)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  base = flat(read_checkpoint(run, 10)["params"])
  assert np.abs(flat(lm.variables["params"])["layers_0/self_attn/q_proj/kernel"]
                - base["layers_0/self_attn/q_proj/kernel"]).max() > 1e-4  # The merge changed the kernel.


def test_export_hf_writes_the_merged_model(run, tmp_path):
  out = str(tmp_path / "hf")
  export_lib.export(run, "hf", out)
  np.testing.assert_allclose(lm_lib.load(out).logits(hf_dirs.TOKENS), unmerged_logits(run, hf_dirs.TOKENS),
                             atol=1e-5, rtol=0)


def test_export_peft_writes_peft_names_and_reads_back(run, hf, tmp_path):
  out = str(tmp_path / "peft")
  export_lib.export(run, "peft", out)
  assert sorted(os.listdir(out)) == ["adapter_config.json", "adapter_model.safetensors"]
  with open(os.path.join(out, "adapter_config.json"), encoding="utf-8") as f:
    config = json.load(f)
  assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
  assert (config["r"], config["lora_alpha"], config["base_model_name_or_path"]) == (4, 8.0, os.path.abspath(hf))
  assert config["target_modules"] == ["down_proj", "model.layers.1.self_attn.k_proj", "lm_head", "q_proj", "v_proj"]
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  tensors = load_file(os.path.join(out, "adapter_model.safetensors"))
  assert tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (4, 48)
  assert tensors["base_model.model.model.layers.2.mlp.down_proj.lora_B.weight"].shape == (48, 4)
  assert tensors["base_model.model.lm_head.lora_B.weight"].shape == (300, 4)
  assert tensors["base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"].shape == (64, 4)
  assert len(tensors) == 2 * (3 * 3 + 1 + 1)
  _, params = lm_lib.load(run).lora
  back = flat(peft.read_peft(out, LLAMA, jax.device_get(params)))
  for name, value in flat(params).items():
    np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_export_mistakes_are_one_line(run, tfds_dir, corpus, tmp_path):
  out = tmp_path / "full"
  out.mkdir()
  (out / "x").write_text("x")
  command = [sys.executable, "-m", "jaxtrain.export", f"--workdir={run}", "--format=peft", f"--out={out}"]
  done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
  assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == \
      f"error: --out={out} exists and is not empty; export to a new directory"
  with pytest.raises(UserError, match="--format must be one of hf, peft, gguf"):
    export_lib.export(run, "onnx", str(tmp_path / "a"))
  plain = str(tmp_path / "plain")
  config = tiny_lm(corpus)
  config.total_steps, config.schedule.warmup_steps = 2, 1
  del config["evals"]
  train.run(config, plain)
  with pytest.raises(UserError, match="is not a LoRA run .* export it with --format=hf"):
    export_lib.export(plain, "peft", str(tmp_path / "b"))
  assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


REFERENCE = os.path.join(ROOT, "tests", "data")


def lora_llama(hf, scan=False, targets=TARGETS):
  """A LoRA Llama of the HF directory `hf`'s shape, and its params: the directory's, adapters freshly initialised."""
  _, kwargs, _ = hf_lib.read_config(hf)
  lora_config_ = dict(rank=4, alpha=8.0, dropout=0.1, targets=targets)
  section = Reader(ml_collections.ConfigDict({"lora": lora_config_})).section("lora")
  module = lora.wrap(section, models.llama.Llama(**kwargs, scan_layers=scan), lm_lib.EXAMPLE)
  params = module.init(jax.random.PRNGKey(1), *lm_lib.EXAMPLE[0], train=False)["params"]
  base = lm_lib.load(hf).variables["params"]
  if scan:  # Layer i of each stacked array is layers_i's.
    base = {**{k: v for k, v in base.items() if not k.startswith("layers_")},
            "layers": jax.tree.map(lambda *x: np.stack(x), *[base[f"layers_{i}"] for i in range(3)])}
  base = flat(base)
  name = lambda path: jax.tree_util.keystr(path, simple=True, separator="/")  # noqa: E731
  return module, jax.tree_util.tree_map_with_path(lambda p, x: x if lora.is_adapter(name(p)) else base[name(p)],
                                                  params)


def test_the_committed_peft_adapter_gives_peft_logits(tmp_path):
  """tests/data/peft_adapter (a jaxtrain fine-tune, exported) on its base, as peft computed it."""
  hf = hf_dirs.make(str(tmp_path / "base"), VARIANT)
  module, params = lora_llama(hf)
  params = peft.read_peft(os.path.join(REFERENCE, "peft_adapter"), LLAMA, params)
  want = np.load(os.path.join(REFERENCE, "peft_logits.npz"))["logits"]
  got = np.asarray(module.apply({"params": params}, hf_dirs.TOKENS, train=False)[0])
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  merged = module.base.apply({"params": lora.merge(params, module.spec.scale)}, hf_dirs.TOKENS, train=False)[0]
  np.testing.assert_allclose(np.asarray(merged), want, atol=1e-4, rtol=0)
  assert np.abs(want - lm_lib.load(hf).logits(hf_dirs.TOKENS)).max() > 1e-2  # The adapter matters.
  with open(os.path.join(REFERENCE, "peft_adapter", "adapter_config.json"), encoding="utf-8") as f:
    assert json.load(f) == peft.adapter_config(LLAMA, module.base, lm_lib.EXAMPLE, module.spec)  # Written as export writes it.


def test_scanned_layers_export_the_same_peft_tensors(tmp_path):
  hf = hf_dirs.make(str(tmp_path / "base"), VARIANT)
  module, params = lora_llama(hf, targets=TARGETS[:-1])
  params = jax.tree.map(lambda x: x + 0.01 if x.ndim == 2 and x.shape[0] == 4 else x, params)  # B != 0.
  scanned, _ = lora_llama(hf, scan=True, targets=TARGETS[:-1])
  stacked = {**{k: v for k, v in params.items() if not k.startswith("layers_")},
             "layers": jax.tree.map(lambda *x: np.stack(x), *[params[f"layers_{i}"] for i in range(3)])}
  want = peft.peft_tensors(LLAMA, module.spec, params)
  got = peft.peft_tensors(LLAMA, scanned.spec, stacked)
  assert sorted(got) == sorted(want)
  for name, value in want.items():
    np.testing.assert_array_equal(got[name], value, err_msg=name)
  logits = scanned.apply({"params": stacked}, hf_dirs.TOKENS, train=False)[0]
  np.testing.assert_allclose(logits, module.apply({"params": params}, hf_dirs.TOKENS, train=False)[0], atol=1e-5)


def test_lora_starts_from_a_jaxtrain_run_and_evaluates(tfds_dir, corpus, hf, run):
  """init_from.workdir loads the base (the adapters stay fresh), and --mode=eval reads a LoRA run."""
  config = lora_config(corpus, hf)
  config.init_from = dict(workdir=run)  # A LoRA run is a base like any other: adapters and all.
  config.lora.targets = ("q_proj",)
  state, exp = started(config)
  saved = flat(read_checkpoint(run, 10)["params"])
  got = flat(state.params)
  for name, value in got.items():
    if not lora.is_adapter(name):
      np.testing.assert_array_equal(value, saved[name], err_msg=name)
  assert "params/layers_0/self_attn/q_proj/lora_A" in exp.init_from.reads  # Same name: read, not fresh.
  assert "params/layers_0/self_attn/v_proj/lora_A" in exp.init_from.unused
  from jaxtrain.modes import evaluate  # pylint: disable=import-outside-toplevel
  results = evaluate.run(lora_config(corpus, hf), run)
  assert np.isfinite(results["val/loss"])
