"""Early stopping (config.early_stopping): where it stops, what it keeps, resume and rerun.

Every run here is the digits MLP of test_train.py, evaluated every 5 steps. Where a run
must stop is worked out independently from the val/loss history of one run without early
stopping: training is deterministic, and early stopping only adds saves, so the runs with
it have the same rows up to their stop.
"""

import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from conftest import read_checkpoint
from jaxtrain import config as config_lib
from jaxtrain.errors import UserError
from jaxtrain import evals
from jaxtrain.modes import evaluate
from jaxtrain import train
from jaxtrain.training import early_stopping
from test_train import drop_timing, read_rows, tiny_config

TOTAL = 60


def base_config():
  c = tiny_config(total_steps=TOTAL)
  c.log_every_steps = 10  # Train rows at other steps than the evaluations: none past the stop either.
  c.evals.val.every_steps = 5
  c.checkpoint.every_steps = 20  # Not a multiple of the evaluations: the best is kept all the same.
  c.checkpoint.keep = 1
  return c


def es_config(**early):
  c = base_config()
  c.early_stopping = dict(metric="val/loss", **early)
  return c


@pytest.fixture(scope="module")
def history(tfds_dir, tmp_path_factory):
  """The rows of a run without early stopping."""
  workdir = str(tmp_path_factory.mktemp("plain"))
  train.run(base_config(), workdir)
  return drop_timing(read_rows(workdir))


def expected_stop(rows, mode, patience, min_delta=0.0):
  """(stop step or None, best step, best value), from the val/loss rows: an independent
  statement of the rule."""
  best = best_step = None
  bad = 0
  for row in rows:
    if "val/loss" not in row:
      continue
    value = row["val/loss"]
    better = best is None or (value < best - min_delta if mode == "min" else value > best + min_delta)
    if better:
      best, best_step, bad = value, row["step"], 0
    else:
      bad += 1
      if bad == patience:
        return row["step"], best_step, best
  return None, best_step, best


def checkpoint_steps(workdir):
  return sorted(int(name) for name in os.listdir(os.path.join(workdir, "checkpoints")) if name.isdigit())


def saved_state(workdir, step):
  with open(os.path.join(workdir, "checkpoints", str(step), "metadata", "metadata"), encoding="utf-8") as f:
    return json.load(f)["early_stopping"]


# 'max' on val/loss: the first evaluation is the best, and it stops `patience` evaluations
# later. 'min' with min_delta 0.02: the loss keeps falling, by less and less, and only
# min_delta stops it (without it, the run goes to the end).
CASES = [dict(mode="max", patience=3), dict(mode="min", patience=2, min_delta=0.02)]


@pytest.mark.parametrize("early", CASES, ids=["max", "min_delta"])
def test_stops_after_patience_evaluations_without_improvement_and_keeps_the_best(
    history, tmp_path, caplog, early):
  stop, best_step, best = expected_stop(history, **early)
  assert stop is not None and stop < TOTAL
  if early.get("min_delta"):
    assert expected_stop(history, early["mode"], early["patience"])[0] is None  # min_delta makes the stop.
  workdir = str(tmp_path / "run")
  with caplog.at_level("INFO"):
    last = train.run(es_config(**early), workdir)

  rows = drop_timing(read_rows(workdir))
  assert rows == [r for r in history if r["step"] <= stop]  # Nothing past the stop, the same before.
  assert last["val/loss"] == rows[-1]["val/loss"]
  by = f" by {early['min_delta']:g}" if early.get("min_delta") else ""
  assert (f"Early stopping at step {stop}: val/loss has not improved{by} for {early['patience']} evaluations "
          f"(best {best:.4g} at step {best_step}, kept in {workdir}/checkpoints/{best_step}; evaluate or load "
          f"it with --step={best_step})") in caplog.text

  # checkpoint.keep=1 keeps the newest (the stop) and, beside it, the best; saved though
  # checkpoints are due every 20 steps only.
  assert checkpoint_steps(workdir) == sorted({best_step, stop})
  assert int(read_checkpoint(workdir, best_step)["rest"]["step"]) == best_step
  assert saved_state(workdir, stop) == dict(metric="val/loss", mode=early["mode"], best=best, best_step=best_step,
                                            bad_evals=early["patience"])


def test_the_kept_best_checkpoint_evaluates_to_the_best_value(history, tmp_path):
  early = CASES[1]
  _, best_step, best = expected_stop(history, **early)
  workdir = str(tmp_path / "run")
  config = es_config(**early)
  train.run(config, workdir)
  plain = ml_collections.ConfigDict(config.to_dict())
  del plain["early_stopping"]  # --mode=eval reads no training sections but its own.
  result = evaluate.run(plain, workdir, step=best_step)
  np.testing.assert_allclose(result["val/loss"], best, rtol=1e-6)


def test_running_the_same_command_again_after_the_stop_trains_no_further(history, tmp_path, caplog):
  early = CASES[0]
  stop, _, _ = expected_stop(history, **early)
  workdir = str(tmp_path / "run")
  config = es_config(**early)
  last = train.run(config, workdir)
  files = {name: open(os.path.join(workdir, name), "rb").read() for name in ("metrics.jsonl", "config.json")}
  steps = checkpoint_steps(workdir)

  with caplog.at_level("INFO"):
    again = train.run(config, workdir)
  assert again == last
  assert f"Stopped early at step {stop} before (val/loss has not improved for 3 evaluations" in caplog.text
  assert "nothing more to train" in caplog.text
  assert {name: open(os.path.join(workdir, name), "rb").read() for name in files} == files
  assert checkpoint_steps(workdir) == steps

  # A higher patience trains on from the stop, counting the evaluations already made.
  train.run(es_config(mode="max", patience=5), workdir)
  assert drop_timing(read_rows(workdir)) == [r for r in history if r["step"] <= stop + 10]


@pytest.mark.parametrize("keep_all", [False, True], ids=["stop_lost", "killed_midway"])
def test_a_resumed_run_stops_at_the_same_step_with_the_same_rows(history, tmp_path, keep_all):
  early = CASES[1]
  stop, best_step, _ = expected_stop(history, **early)
  config = es_config(**early)
  if keep_all:
    config.checkpoint.keep = 100
    config.checkpoint.every_steps = 10
  workdir = str(tmp_path / "run")
  train.run(config, workdir)
  uninterrupted = drop_timing(read_rows(workdir))
  final = read_checkpoint(workdir, stop)["params"]

  # As if killed before saving the stop (it resumes from the best, with no evaluation to
  # spare), or midway, long before the stop (from step 30).
  for step in checkpoint_steps(workdir):
    if step > (30 if keep_all else best_step):
      shutil.rmtree(os.path.join(workdir, "checkpoints", str(step)))
  train.run(config, workdir)

  assert drop_timing(read_rows(workdir)) == uninterrupted
  assert max(checkpoint_steps(workdir)) == stop
  resumed = read_checkpoint(workdir, stop)["params"]
  for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(resumed), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ---- Config mistakes: one line each, at start-up --------------------------------------------


class _FakeEvaluator:
  metric_names = ("accuracy", "loss", "num_examples")


EVALUATORS = [evals.Scheduled("val", _FakeEvaluator(), 5), evals.Scheduled("test", _FakeEvaluator(), None)]


@pytest.mark.parametrize("early, message", [
    (dict(metric="val/los", mode="min", patience=3),
     "early_stopping.metric='val/los' is not a metric of this run's evaluators (did you mean 'val/loss'?); the "
     "evaluators report test/accuracy, test/loss, test/num_examples, val/accuracy, val/loss, val/num_examples"),
    (dict(metric="train/loss", mode="min", patience=3),
     "early_stopping.metric='train/loss' is not a metric of this run's evaluators"),
    (dict(metric="test/loss", mode="min", patience=3),
     "early_stopping.metric='test/loss' is measured only at the end of training: there is nothing to stop; set "
     "evals.test.every_steps (or _epochs, _examples)"),
    (dict(metric="val/loss", mode="lowest", patience=3),
     "early_stopping.mode must be 'min' or 'max' (is a lower or a higher val/loss better?), got 'lowest'"),
    (dict(metric="val/loss", patience=3), "config key 'early_stopping.mode' is required but not set"),
    (dict(metric="val/loss", mode="min", patience=0), "config key 'early_stopping.patience' must be at least 1, got 0"),
    (dict(metric="val/loss", mode="min", patience=2.5), "config key 'early_stopping.patience' must be int, got 2.5"),
    (dict(metric="val/loss", mode="min", patiense=3),
     "config key 'early_stopping.patience' is required but not set (did you mean 'early_stopping.patiense'?)"),
    (dict(metric="val/loss", mode="min", patience=3, min_delta=-0.01),
     "config key 'early_stopping.min_delta' must be at least 0.0, got -0.01"),
    (dict(metric="val/loss", mode="min", patience=3, min_delta=float("inf")),
     "config key 'early_stopping.min_delta' must be a finite number, got inf"),
])
def test_a_config_mistake_is_one_line(early, message):
  reader = config_lib.Reader(ml_collections.ConfigDict({"early_stopping": early}))
  with pytest.raises(UserError) as e:
    early_stopping.build(reader.section("early_stopping"), EVALUATORS)
  assert message in str(e.value) and "\n" not in str(e.value)


def test_without_the_section_there_is_no_rule():
  reader = config_lib.Reader(ml_collections.ConfigDict())
  assert early_stopping.build(reader.section("early_stopping"), EVALUATORS) is None


def test_a_config_mistake_fails_the_run_before_anything_is_written(tfds_dir, tmp_path):
  workdir = str(tmp_path / "run")
  config = es_config(mode="min", patience=2)
  config.early_stopping.metric = "val/acuracy"
  with pytest.raises(UserError, match=r"early_stopping.metric='val/acuracy' .* \(did you mean 'val/accuracy'\?\)"):
    train.run(config, workdir)
  assert not os.path.exists(workdir)
  config = es_config(mode="min", patience=2, min_dleta=0.1)  # A typo nothing reads.
  with pytest.raises(UserError, match=r"unknown config key 'early_stopping.min_dleta' \(did you mean "
                                      r"'early_stopping.min_delta'\?\)"):
    train.run(config, workdir)
  assert not os.path.exists(workdir)
