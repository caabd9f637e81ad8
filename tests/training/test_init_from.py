"""`config.init_from`: a fresh run starts from another run's weights, all or some (ignore,
rename), says what it loaded, left fresh and did not use, refuses shapes that do not fit
and checkpoints of other models in one line, and a resumed run reads only its own."""

import logging
import os
import shutil

import jax
import numpy as np
import pytest

import hf_dirs
from conftest import read_checkpoint, tiny_lm
from jaxtrain.errors import UserError
from jaxtrain.lm import hf as hf_lib
from jaxtrain.lm import language_model as lm_lib
from jaxtrain import train
from jaxtrain.training import build as build_lib
from test_train import read_rows, tiny_config


@pytest.fixture(scope="module")
def source(tfds_dir, tmp_path_factory):
  """A short CNN run (BatchNorm statistics too), checkpoints at 10, 20, 30."""
  workdir = str(tmp_path_factory.mktemp("source"))
  train.run(tiny_config(cnn=True), workdir)
  return workdir


def started(config, workdir=None):
  """The state a fresh run of `config` starts from (as train.run makes it), and its build."""
  exp = build_lib.build(config, workdir)
  return exp.fresh_state(), exp


def flat(tree):
  return {jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(x)
          for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def test_a_fresh_run_starts_from_the_params_and_statistics_of_the_checkpoint(source):
  config = tiny_config(cnn=True)
  config.seed = 7  # Another initialisation: what is loaded must not be it.
  config.init_from = dict(workdir=source, step=20)
  state, exp = started(config)
  saved = read_checkpoint(source, 20)
  for name, value in flat(saved["params"]).items():
    np.testing.assert_array_equal(flat(state.params)[name], value, err_msg=name)
  np.testing.assert_array_equal(flat(state.model_state)["batch_stats/BatchNorm_0/mean"],
                                flat(saved["rest"]["model_state"])["batch_stats/BatchNorm_0/mean"])
  assert int(state.step) == 0 and exp.init_from.source.what.endswith("step 20")
  fresh, _ = started(tiny_config(cnn=True))
  assert not np.array_equal(flat(fresh.params)["Conv_0/kernel"], flat(state.params)["Conv_0/kernel"])
  # The optimizer state is new: Adam's moments are zeros.
  assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0)


def test_a_new_head_is_left_fresh_by_ignore_and_the_log_lists_what_happened(source, caplog):
  config = tiny_config(cnn=True)  # Fine-tuned to tell the digits 0-4 apart: a head of 5 classes.
  config.model.num_classes = 5
  for section in (config.input, config.evals.val):
    section.pp = section.pp.replace("onehot(10", "onehot(5")
    section.data.classes = (0, 1, 2, 3, 4)
  config.init_from = dict(workdir=source)
  with pytest.raises(UserError, match=r"init_from: params/head/bias has shape \[5\] in the new model but "
                                      r"\[10\] in .*checkpoints/30; leave it fresh with init_from.ignore"):
    build_lib.build(config)
  config.init_from.ignore = ("params/head/",)
  with caplog.at_level(logging.INFO):
    state, exp = started(config)
  assert exp.init_from.ignored == ["params/head/bias", "params/head/kernel"]
  assert exp.init_from.unused == ["params/head/bias", "params/head/kernel"] and exp.init_from.missing == []
  line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("init_from "))
  assert "loaded 12 arrays" in line and "left fresh by init_from.ignore: params/head/bias, params/head/kernel" in line
  fresh, _ = started(_without_init_from(config))
  np.testing.assert_array_equal(flat(state.params)["head/kernel"], flat(fresh.params)["head/kernel"])
  np.testing.assert_array_equal(flat(state.params)["Dense_0/kernel"], flat(read_checkpoint(source, 30)["params"])[
      "Dense_0/kernel"])


def _without_init_from(config):
  config = config.copy_and_resolve_references()
  del config["init_from"]
  return config


def test_rename_reads_an_array_under_another_name(tfds_dir, tmp_path):
  mlp = tiny_config()
  mlp.model.hidden = (32, 32, 32)
  train.run(mlp, str(tmp_path / "mlp"))
  config = tiny_config()
  config.model.hidden = (32, 32, 32)
  config.init_from = dict(workdir=str(tmp_path / "mlp"), rename=((r"^params/Dense_2/", "params/Dense_1/"),))
  state, exp = started(config)
  saved = flat(read_checkpoint(str(tmp_path / "mlp"), 30)["params"])
  np.testing.assert_array_equal(flat(state.params)["Dense_2/kernel"], saved["Dense_1/kernel"])
  np.testing.assert_array_equal(flat(state.params)["Dense_1/kernel"], saved["Dense_1/kernel"])
  assert exp.init_from.reads["params/Dense_2/kernel"] == "params/Dense_1/kernel"
  assert exp.init_from.unused == ["params/Dense_2/bias", "params/Dense_2/kernel"]


def test_a_fine_tuning_run_trains_from_the_checkpoint_and_resumes_without_its_source(source, tmp_path):
  copy = str(tmp_path / "source_copy")
  shutil.copytree(source, copy)
  config = tiny_config(cnn=True, total_steps=20)
  config.init_from = dict(workdir=copy)
  workdir = str(tmp_path / "finetune")
  train.run(config, workdir)
  first = [r["val/accuracy"] for r in read_rows(workdir) if "val/accuracy" in r]
  scratch = [r["val/accuracy"] for r in read_rows(source) if "val/accuracy" in r]
  assert first[0] >= scratch[-1] - 0.05  # It starts where the source ended, not from scratch.
  shutil.rmtree(copy)  # Resuming reads its own checkpoints, not the (now gone) source.
  config.total_steps = 30
  train.run(config, workdir)
  assert [r["step"] for r in read_rows(workdir) if "val/accuracy" in r] == [10, 20, 30]


def test_init_from_mistakes_are_one_line(source, tmp_path):
  def fails(message, **init_from):
    config = tiny_config(cnn=True)
    config.init_from = init_from
    with pytest.raises(UserError, match=message):
      build_lib.build(config)

  fails(r"init_from.workdir=.*nowhere holds no checkpoints/", workdir=str(tmp_path / "nowhere"))
  fails(r"init_from.step: .* has no checkpoint at step 15; it has 10, 20, 30", workdir=source, step=15)
  fails(r"init_from.ignore\[0\] pattern 'params/haed' matches no array", workdir=source, ignore=("params/haed",))
  fails(r"config key 'init_from' needs one of workdir= \(a jaxtrain run\), hf_dir= .* or gguf= \(a GGUF file\)$",
        step=3)
  fails(r"needs one of workdir= .*, not several", workdir=source, hf_dir=str(tmp_path))
  fails(r"init_from.hf_dir=.*nowhere is not a directory", hf_dir=str(tmp_path / "nowhere"))
  mlp_dir = str(tmp_path / "mlp")
  train.run(tiny_config(total_steps=10), mlp_dir)
  fails(r"init_from: params/Dense_0/kernel has shape \[256, 32\] in the new model but \[64, 32\]", workdir=mlp_dir)
  fails(r"init_from: .*mlp/checkpoints/10 shares no array with the new model .* a run of another model",
        workdir=mlp_dir, ignore=("params/Dense_0/", "params/head/"))
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("scan", [False, True])
def test_a_language_model_starts_from_a_hugging_face_directory(tfds_dir, corpus, tmp_path, scan):
  hf = hf_dirs.make(str(tmp_path / "hf"), "gqa_tied")
  _, kwargs, _ = hf_lib.read_config(hf)
  config = tiny_lm(corpus)
  config.input.data.tokenizer.vocab_size = 300  # At most the model's 320 ids.
  config.model = dict(name="llama", scan_layers=scan, **{k: v for k, v in kwargs.items() if k != "rope_scaling"})
  config.init_from = dict(hf_dir=hf)
  state, exp = started(config)
  expected = flat(lm_lib.load(hf).variables["params"])
  got = flat(state.params)
  if scan:  # Stacked layers: layer i of each stacked array is layers_i's.
    got = {name.replace("layers/", f"layers_{i}/"): value[i] for name, value in got.items() if "layers/" in name
           for i in range(kwargs["num_layers"])} | {n: v for n, v in got.items() if "layers/" not in n}
  assert sorted(got) == sorted(expected)
  for name, value in expected.items():
    np.testing.assert_array_equal(got[name], value, err_msg=name)
  assert exp.init_from.missing == [] and exp.init_from.unused == []
  # What init_from overwrites is never randomly initialised: the compiled creation is a fraction
  # of the full one (SmolLM2-135M's compiled in 54 s, 0.5 s without its loaded arrays' init).
  ops = lambda fn: jax.jit(fn).lower().compile().as_text().count("\n")  # noqa: E731
  assert ops(exp.init_from.create_fn(exp.create)) < ops(exp.create) / 2
  config.model.num_layers = 1  # A smaller model: the second layer's weights go unused.
  if scan:  # Stacked layers cannot be taken in part.
    with pytest.raises(UserError, match=r"params/layers/.* has shape \[1, .* in the new model but \[2, "):
      started(config)
  else:
    _, exp = started(config)
    assert "params/layers_1/mlp/up_proj/kernel" in exp.init_from.unused


def test_a_relative_init_from_workdir_works_as_the_docs_write_it(source, tmp_path, monkeypatch):
  """`--config.init_from.workdir=runs/code_lm`: a path relative to where the command runs.
  Orbax reads no metadata through a relative path (it crashed with AttributeError)."""
  shutil.copytree(source, tmp_path / "runs" / "source")
  monkeypatch.chdir(tmp_path)
  config = tiny_config(cnn=True)
  config.init_from = dict(workdir="runs/source", step=20)
  state, exp = started(config)
  assert exp.init_from.source.what == f"{tmp_path}/runs/source step 20"
  np.testing.assert_array_equal(flat(state.params)["Conv_0/kernel"], flat(read_checkpoint(source, 20)["params"])["Conv_0/kernel"])
