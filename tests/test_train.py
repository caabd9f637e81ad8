"""End to end: train.run in a temporary work directory, its files, metrics and resume."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from conftest import load_experiment, read_checkpoint
from jaxtrain.errors import UserError
from jaxtrain import evals
from jaxtrain import train
from jaxtrain.training import build as build_lib
from jaxtrain.training import profiling


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
  return read_checkpoint(workdir, step)["params"]


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


def drop_timing(rows):
  return [{k: v for k, v in r.items() if not k.endswith(("_per_sec", "_seconds"))} for r in rows]


@pytest.mark.parametrize("checkpoint_every", [10, 15])  # On a log step, and between two.
def test_rerun_resumes_from_the_newest_checkpoint_and_matches_an_uninterrupted_run(
    tfds_dir, tmp_path, checkpoint_every):
  config = tiny_config()
  config.checkpoint.every_steps = checkpoint_every
  workdir = str(tmp_path / "run")
  train.run(config, workdir)
  uninterrupted = restore_params(workdir, 30)
  uninterrupted_rows = drop_timing(read_rows(workdir))

  # As if the run had died just before saving step 30: the same command carries on.
  shutil.rmtree(os.path.join(workdir, "checkpoints", "30"))
  train.run(config, workdir)

  # Rows after the checkpoint are replaced, not repeated, and the same to the last bit: the
  # checkpoint of step 15 carries the metrics of steps 11-15 into the row of step 20.
  assert drop_timing(read_rows(workdir)) == uninterrupted_rows
  resumed = restore_params(workdir, 30)
  for a, b in zip(jax.tree.leaves(uninterrupted), jax.tree.leaves(resumed), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_half_written_checkpoint_is_never_restored(tfds_dir, tmp_path):
  workdir = str(tmp_path / "run")
  train.run(tiny_config(total_steps=20), workdir)
  # What a process killed in the middle of saving step 30 leaves: Orbax's temporary directory.
  half = os.path.join(workdir, "checkpoints", "30.orbax-checkpoint-tmp-1234567")
  shutil.copytree(os.path.join(workdir, "checkpoints", "20"), half)
  open(os.path.join(half, "params", "_METADATA"), "w").close()
  train.run(tiny_config(total_steps=40), workdir)
  rows = read_rows(workdir)
  assert [r["step"] for r in rows if "train/loss" in r] == [10, 20, 30, 40]


def test_train_rows_average_every_step_of_their_interval(tfds_dir, tmp_path):
  every_step, every_ten = tiny_config(), tiny_config()
  every_step.log_every_steps = 1
  train.run(every_step, str(tmp_path / "a"))
  train.run(every_ten, str(tmp_path / "b"))
  fine = [r for r in read_rows(str(tmp_path / "a")) if "train/loss" in r]
  coarse = [r for r in read_rows(str(tmp_path / "b")) if "train/loss" in r]
  for row in coarse:
    interval = [r for r in fine if row["step"] - 10 < r["step"] <= row["step"]]
    for key in ("train/loss", "train/accuracy", "train/grad_norm", "train/lr"):
      np.testing.assert_allclose(row[key], np.mean([r[key] for r in interval]), rtol=1e-6)


def test_resuming_with_a_changed_config_logs_the_changes_and_keeps_the_earlier_config(tfds_dir, tmp_path, caplog):
  workdir = tmp_path / "run"
  train.run(tiny_config(total_steps=20), str(workdir))
  first = (workdir / "config.json").read_text()
  more = tiny_config(total_steps=30)
  more.optimizer.lr = 1e-3
  with caplog.at_level("WARNING"):
    train.run(more, str(workdir))
  assert ("Resuming at step 20 with a changed config: optimizer.lr 0.003 -> 0.001; total_steps 20 -> 30."
          in caplog.text)
  assert (workdir / "config_history" / "until_step_20.json").read_text() == first
  assert json.loads((workdir / "config.json").read_text())["total_steps"] == 30


def test_a_finished_run_started_again_does_no_more_steps(tfds_dir, tmp_path):
  workdir = str(tmp_path / "run")
  train.run(tiny_config(), workdir)
  before = read_rows(workdir)
  train.run(tiny_config(), workdir)
  assert read_rows(workdir) == before


def test_non_finite_loss_stops_the_run_and_keeps_only_checkpoints_that_gave_finite_losses(tfds_dir, tmp_path):
  c = tiny_config()
  c.optimizer = dict(name="sgd", lr=1e12)
  c.schedule = dict(name="constant")
  c.checkpoint.every_steps = 1  # Saved every step, logged every 10: the save must check first.
  c.checkpoint.keep = 100
  workdir = tmp_path / "run"
  with pytest.raises(train.NonFiniteLoss, match=r"(loss|gradient norm) is (nan|inf) at step \d+; lower optimizer.lr") as e:
    train.run(c, str(workdir))
  # The state of step e.step - 1 gave the bad loss: its checkpoint is set aside too.
  bad = e.value.step
  saved = sorted(int(name) for name in os.listdir(workdir / "checkpoints"))
  assert bad > 2 and saved == list(range(1, bad - 1))
  assert sorted(int(name) for name in os.listdir(workdir / "checkpoints_set_aside")) == [bad - 1]
  assert f"checkpoints {bad - 1} gave or followed it and were moved to" in str(e.value)

  # Doing as the message says resumes from the last good checkpoint and finishes.
  c.optimizer.lr = 1e-3
  last = train.run(c, str(workdir))
  assert np.isfinite(last["train/loss"])


def test_a_run_stopped_during_an_evaluation_evaluates_again_when_resumed(tfds_dir, tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  train.run(tiny_config(), str(tmp_path / "reference"))
  calls = []
  real_run = evals.task_metrics.TaskMetrics.run

  def interrupted_at_the_third(self, variables):
    calls.append(len(calls) + 1)
    if len(calls) == 3:
      raise KeyboardInterrupt
    return real_run(self, variables)

  monkeypatch.setattr(evals.task_metrics.TaskMetrics, "run", interrupted_at_the_third)
  with pytest.raises(KeyboardInterrupt):
    train.run(tiny_config(), workdir)
  assert calls == [1, 2, 3] and sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20"]
  monkeypatch.setattr(evals.task_metrics.TaskMetrics, "run", real_run)
  train.run(tiny_config(), workdir)
  assert drop_timing(read_rows(workdir)) == drop_timing(read_rows(str(tmp_path / "reference")))


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


def poison_batches_starting_with(label):
  """A preprocessing op for the test below: NaN images in batches whose first label is `label`."""
  def fn(batch):
    if batch["label"][0] == label:
      batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
    return batch
  return fn


def test_skip_nonfinite_skips_bad_steps_counts_them_and_finishes(tfds_dir, tmp_path):
  c = tiny_config()
  c.input.pp = c.input.pp.replace("random_shift(1)|", "random_shift(1)|test_train:poison_batches_starting_with(3)|")
  c.skip_nonfinite = True
  workdir = str(tmp_path / "run")
  last = train.run(c, workdir)
  train_rows = [r for r in read_rows(workdir) if "train/loss" in r]
  skipped = sum(r["train/skipped_steps"] for r in train_rows)
  assert 0 < skipped < 10  # About one batch in ten starts with a 3.
  assert all(np.isfinite(r["train/loss"]) for r in train_rows)
  assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(restore_params(workdir, 30)))
  assert np.isfinite(last["val/loss"]) and last["val/accuracy"] > 0.2  # Chance is 0.1.

  c.skip_nonfinite = False  # The same data without the option stops at the first poisoned batch.
  with pytest.raises(train.NonFiniteLoss):
    train.run(c, str(tmp_path / "strict"))


@pytest.mark.parametrize("mode, kept", [("max", ["10", "30"]), ("min", ["30"])])
def test_keep_best_keeps_the_newest_and_the_best_by_the_named_metric(tfds_dir, tmp_path, mode, kept):
  c = tiny_config()
  c.checkpoint.keep = 1
  c.checkpoint.keep_best = 1
  c.checkpoint.best_metric = "val/loss"  # Falls at every evaluation: 'max' keeps the first, 'min' the last.
  c.checkpoint.best_mode = mode
  workdir = str(tmp_path / "run")
  train.run(c, workdir)
  val_losses = [r["val/loss"] for r in read_rows(workdir) if "val/loss" in r]
  assert val_losses == sorted(val_losses, reverse=True)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")), key=int) == kept


# ---- Defects fixed with the task contract (each test failed before its fix) ----------------


def test_finite_loss_with_infinite_gradients_stops_before_anything_is_saved(tfds_dir, tmp_path):
  """Defect 3: only the loss was checked, so such a step was evaluated and saved."""
  c = tiny_config()
  c.model = dict(name="test_tasks:SqrtOfAParameter", num_classes=10)
  c.checkpoint.every_steps = 1
  workdir = tmp_path / "run"
  with pytest.raises(train.NonFiniteLoss, match=r"^the gradient norm is inf at step 1, before any update"):
    train.run(c, str(workdir))
  assert os.listdir(workdir / "checkpoints") == []
  assert not [r for r in read_rows(str(workdir)) if "val/loss" in r]


def test_an_interval_of_skipped_steps_logs_no_loss(tfds_dir, tmp_path):
  """Defect 4: an interval where every step was skipped logged loss 0.0."""
  c = tiny_config()
  c.model = dict(name="test_tasks:SqrtOfAParameter", num_classes=10)  # Every step's gradient is infinite.
  c.skip_nonfinite = True
  workdir = str(tmp_path / "run")
  train.run(c, workdir)
  train_rows = [r for r in read_rows(workdir) if "train/lr" in r]
  assert [r["train/skipped_steps"] for r in train_rows] == [10, 10, 10]
  assert not any("train/loss" in r or "train/accuracy" in r for r in train_rows)


@pytest.mark.parametrize("metric, evals_every, error", [
    ("val/accuracy", 15, r"measured every 15 steps \(evals.val.every_steps\), but checkpoints are saved every 10"),
    ("val/accuracy", None, r"measured only at the end of training, but checkpoints are saved every 10"),
    ("train/loss", 10, None),  # Logged every 10 steps: every checkpoint has it.
    ("val/accuracy", 5, None),
])
def test_keep_best_needs_the_metric_at_every_checkpoint(tfds_dir, tmp_path, metric, evals_every, error):
  """Defect 5: a checkpoint whose step has no value of the metric cannot be ranked."""
  c = tiny_config()
  c.checkpoint.keep_best, c.checkpoint.best_metric, c.checkpoint.best_mode = 1, metric, "min"
  c.evals.val.every_steps = evals_every
  if error:
    with pytest.raises(UserError, match=r"checkpoint.best_metric='val/accuracy' is " + error):
      build_lib.build(c)
  else:
    build_lib.build(c)


@pytest.mark.parametrize("key, change", [("input.batch_size", 16), ("seed", 1)])
def test_resuming_with_another_batch_size_or_seed_is_refused_and_changes_nothing(tfds_dir, tmp_path, key, change):
  """Defect 6: the data position is the index of the next global batch; with another
  batch size or seed it points at other examples, and resuming only logged the change."""
  workdir = str(tmp_path / "run")
  c = tiny_config()
  c.total_steps = 20
  train.run(c, workdir)
  before = {name: open(os.path.join(workdir, name), encoding="utf-8").read() for name in ("metrics.jsonl", "config.json")}
  c.total_steps = 30
  if key == "seed":
    c.seed = change
  else:
    c.input.batch_size = change
  with pytest.raises(UserError, match=rf"checkpoint 20 in .* was saved with {key}=\w+, not {change}: resuming "
                                      rf"would jump to other examples; resume with {key}="):
    train.run(c, workdir)
  after = {name: open(os.path.join(workdir, name), encoding="utf-8").read() for name in ("metrics.jsonl", "config.json")}
  assert after == before and sorted(os.listdir(os.path.join(workdir, "checkpoints")), key=int) == ["10", "20"]


def test_a_host_sync_slipped_into_the_steps_fails_at_once(tfds_dir, tmp_path, monkeypatch):
  """The loop promises never to wait for the device between logs: its steps run under
  jax.transfer_guard("disallow"), so an implicit transfer there (here, the profiler hook
  computing with the step number outside jit) is an error, not a silent stall of every
  step. On CPU JAX guards host-to-device transfers only (reading a CPU array is no copy);
  on GPUs and TPUs, `float(state.step)` fails too."""
  def computes_on_the_host(self, step, state, workdir):  # pylint: disable=unused-argument
    return state.step + 1  # The 1 goes to the device: a transfer per step.
  monkeypatch.setattr(profiling.Profile, "at", computes_on_the_host)
  with pytest.raises(Exception, match=r"Disallowed (device-to-host|host-to-device) transfer"):
    train.run(tiny_config(), str(tmp_path))
