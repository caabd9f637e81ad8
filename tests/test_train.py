"""End to end: train.run in a temporary work directory, its files, metrics and resume."""

import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import load_experiment
from jaxtrain import train
from jaxtrain.errors import UserError


def tiny_config(total_steps=30, cnn=False):
  """The digits experiment, shrunk to seconds: a small MLP (or CNN), 30 steps of 32 examples."""
  c = load_experiment("digits").get_config("cnn" if cnn else "mlp")
  c.total_epochs = None
  c.total_steps = total_steps
  c.log_every_steps = 10
  c.input.batch_size = 32
  if cnn:
    c.model.features, c.model.dense = (8, 16), 32
  else:
    c.model.hidden = (32,)
  c.schedule.warmup_epochs = None
  c.schedule.warmup_steps = 5
  c.evals.val.every_epochs = None
  c.evals.val.every_steps = 10
  c.checkpoint.every_epochs = None
  c.checkpoint.every_steps = 10
  c.checkpoint.keep = 5
  return c


def read_rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def restore_params(workdir, step):
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(os.path.join(workdir, "checkpoints", str(step), "state"))["params"]


def test_run_writes_config_metrics_tensorboard_and_checkpoints(tfds_dir, tmp_path):
  workdir = str(tmp_path / "run")
  last = train.run(tiny_config(), workdir)

  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    saved = json.load(f)
  assert saved["total_steps"] == 30 and saved["model"]["hidden"] == [32]

  rows = read_rows(workdir)
  train_rows = [r for r in rows if "train/loss" in r]
  val_rows = [r for r in rows if "val/accuracy" in r]
  assert [r["step"] for r in train_rows] == [10, 20, 30]
  assert [r["step"] for r in val_rows] == [10, 20, 30]
  for key in ("train/loss", "train/accuracy", "train/lr", "train/grad_norm", "train/steps_per_sec",
              "train/examples_per_sec", "train/epoch"):
    assert np.isfinite(train_rows[-1][key]), key
  assert train_rows[-1]["train/loss"] < train_rows[0]["train/loss"]
  assert all(r["val/num_examples"] == 359 for r in val_rows)  # Every test example, exactly once.
  assert last["val/accuracy"] == val_rows[-1]["val/accuracy"]

  assert any(name.startswith("events.out.tfevents") for name in os.listdir(os.path.join(workdir, "tensorboard")))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20", "30"]


def test_rerun_resumes_from_the_newest_checkpoint_and_matches_an_uninterrupted_run(tfds_dir, tmp_path):
  workdir = str(tmp_path / "run")
  train.run(tiny_config(), workdir)
  uninterrupted = restore_params(workdir, 30)
  uninterrupted_rows = read_rows(workdir)

  # As if the run had died after saving step 20: the same command carries on from there.
  shutil.rmtree(os.path.join(workdir, "checkpoints", "30"))
  os.remove(os.path.join(workdir, "metrics.jsonl"))
  train.run(tiny_config(), workdir)

  resumed_rows = read_rows(workdir)
  assert [r["step"] for r in resumed_rows if "train/loss" in r] == [30]
  same_step = [r for r in uninterrupted_rows if r["step"] == 30 and "train/loss" in r][0]
  assert resumed_rows[0]["train/loss"] == same_step["train/loss"]
  resumed = restore_params(workdir, 30)
  for a, b in zip(jax.tree.leaves(uninterrupted), jax.tree.leaves(resumed), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_finished_run_started_again_does_no_more_steps(tfds_dir, tmp_path):
  workdir = str(tmp_path / "run")
  train.run(tiny_config(), workdir)
  before = read_rows(workdir)
  train.run(tiny_config(), workdir)
  assert read_rows(workdir) == before


def test_non_finite_loss_stops_the_run_naming_the_step_and_saves_no_diverged_state(tfds_dir, tmp_path):
  c = tiny_config()
  c.optimizer = dict(name="sgd", lr=1e12)
  c.schedule = dict(name="constant")
  c.checkpoint.every_steps = 1  # Saved every step, logged every 10: the save must check first.
  c.checkpoint.keep = 100
  workdir = tmp_path / "run"
  with pytest.raises(train.NonFiniteLoss, match=r"loss is (nan|inf) at step \d+; lower optimizer.lr") as e:
    train.run(c, str(workdir))
  bad_step = int(str(e.value).split("at step ")[1].split(";")[0])
  saved = sorted(int(name) for name in os.listdir(workdir / "checkpoints"))
  assert saved == list(range(1, bad_step))


def test_a_key_nothing_reads_fails_before_the_workdir_is_touched(tfds_dir, tmp_path):
  c = tiny_config()
  c.optimizer.lrr = 0.1
  workdir = tmp_path / "run"
  with pytest.raises(UserError, match=r"unknown config key 'optimizer.lrr' \(did you mean 'optimizer.lr'\?\)"):
    train.run(c, str(workdir))
  assert not workdir.exists()


def test_the_global_batch_must_divide_over_the_devices_and_fit_the_data(tfds_dir, tmp_path):
  c = tiny_config()
  c.input.batch_size = 4096
  with pytest.raises(UserError, match="larger than the 1438 training examples"):
    train.run(c, str(tmp_path / "run"))


def test_workdir_that_is_a_file_is_refused(tfds_dir, tmp_path):
  path = tmp_path / "file"
  path.write_text("keep me")
  with pytest.raises(UserError, match="is a file, not a directory"):
    train.run(tiny_config(), str(path))
  assert path.read_text() == "keep me"
