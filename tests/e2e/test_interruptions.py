"""Runs stopped any way at all end exactly as if they had never stopped.

Each test launches `python -m jaxtrain.launch` as a user would, interrupts it (SIGKILL at
several points, SIGTERM, a damaged checkpoint, a second run on the same directory), runs
the same command again, and compares with one uninterrupted run: the same parameters to
the last bit and the same metric rows. (Restore errors that are not damage, and a full
disk, are in test_checkpoint_faults.py.)
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, read_checkpoint
from jaxtrain.rundir import layout
from jaxtrain.rundir import storage

DIGITS = os.path.join(ROOT, "experiments", "digits.py")
TOTAL = 300
# A CNN small enough for seconds, slow enough (~100 steps/s) to be stopped mid-run.
ARGS = [f"--config={DIGITS}", "--config.input.batch_size=32", "--config.model.features=(8, 16)",
        "--config.total_epochs=0", f"--config.total_steps={TOTAL}", "--config.log_every_steps=10",
        "--config.schedule.warmup_epochs=0", "--config.checkpoint.every_epochs=0",
        "--config.checkpoint.every_steps=25", "--config.checkpoint.keep=100",
        "--config.evals.val.every_epochs=0", "--config.evals.val.every_steps=100"]

pytestmark = pytest.mark.slow


def start(workdir, *more):
  return subprocess.Popen([sys.executable, "-m", "jaxtrain.launch", f"--workdir={workdir}", *ARGS, *more],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(workdir):
  result = subprocess.run([sys.executable, "-m", "jaxtrain.launch", f"--workdir={workdir}", *ARGS], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def logged_step(workdir):
  """The last step metrics.jsonl has a whole row of (on disk, or gs:// for test_gcs_workdir.py)."""
  try:
    lines = storage.read_text(os.path.join(workdir, "metrics.jsonl")).split("\n")[:-1]
  except FileNotFoundError:
    return 0
  return max((json.loads(line)["step"] for line in lines), default=0)


def wait_for_step(process, workdir, step):
  deadline = time.time() + 120
  while logged_step(workdir) < step:
    assert process.poll() is None, process.communicate()[1][-3000:]
    assert time.time() < deadline, "the run did not get there in time"
    time.sleep(0.02)


def rows(workdir):
  return [{k: v for k, v in json.loads(line).items() if not k.endswith(("_per_sec", "_seconds"))}
          for line in storage.read_text(os.path.join(workdir, "metrics.jsonl")).splitlines()]


def final_state(workdir):
  return read_checkpoint(workdir, TOTAL)


def assert_same_run(workdir, reference):
  assert rows(workdir) == rows(reference)
  for a, b in zip(jax.tree.leaves(final_state(reference)), jax.tree.leaves(final_state(workdir)), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture(scope="module")
def reference(tfds_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  finish(workdir)
  return workdir


def test_killed_at_several_points_then_resumed_ends_as_if_never_stopped(reference, tmp_path):
  workdir = str(tmp_path / "run")
  for stop_after in (30, 140, 260):  # Before a checkpoint's step, around an evaluation, near the end.
    process = start(workdir)
    wait_for_step(process, workdir, stop_after)
    process.send_signal(signal.SIGKILL)
    process.wait()
  finish(workdir)
  assert_same_run(workdir, reference)


def preempt(workdir, after_step=110):
  """SIGTERM to a run once it logged `after_step`: it saves at the next step and exits as
  the signal would. The step it saved, the newest checkpoint (on disk, or gs://)."""
  process = start(workdir)
  wait_for_step(process, workdir, after_step)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
  [message] = [line for line in stderr.splitlines() if "preempted (SIGTERM)" in line]
  step = int(message.split("at step ")[1].split(";")[0])
  assert step >= after_step
  assert layout.newest_complete_step(workdir) == step
  return step


def test_sigterm_saves_at_the_next_step_and_the_same_command_resumes(reference, tmp_path):
  workdir = str(tmp_path / "run")
  preempt(workdir)
  finish(workdir)
  assert_same_run(workdir, reference)


def test_a_second_run_on_a_live_workdir_is_refused_and_a_dead_runs_lock_does_not_block(tfds_dir, tmp_path):
  workdir = str(tmp_path / "run")
  long_run = "--config.total_steps=1000000"
  process = start(workdir, long_run)
  wait_for_step(process, workdir, 20)
  second = subprocess.run([sys.executable, "-m", "jaxtrain.launch", f"--workdir={workdir}", *ARGS, long_run],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert second.returncode == 2, second.stderr[-3000:]
  assert f"error: --workdir={workdir} is in use by a live run (pid {process.pid} on " in second.stderr
  assert process.poll() is None  # The live run was not disturbed.
  process.send_signal(signal.SIGKILL)  # Its lock file stays behind; the lock itself dies with it.
  process.wait()
  assert os.path.exists(os.path.join(workdir, ".lock"))
  reached = logged_step(workdir)
  third = start(workdir, long_run)
  wait_for_step(third, workdir, reached + 20)  # It took the lock and trains on.
  third.send_signal(signal.SIGKILL)
  third.wait()


def test_a_damaged_newest_checkpoint_is_set_aside_and_the_one_before_resumes(reference, tmp_path):
  workdir = str(tmp_path / "run")
  process = start(workdir)
  wait_for_step(process, workdir, 160)
  process.send_signal(signal.SIGKILL)
  process.wait()
  saved = sorted(int(name) for name in os.listdir(os.path.join(workdir, "checkpoints")) if name.isdigit())
  newest = saved[-1]
  data_files = os.path.join(workdir, "checkpoints", str(newest), "params", "ocdbt.process_0", "d")
  for name in os.listdir(data_files):  # As a full disk or a bad copy would leave it.
    with open(os.path.join(data_files, name), "r+b") as f:
      f.truncate(10)
  result = finish(workdir)
  [warning] = [line for line in result.stderr.splitlines() if f"checkpoints/{newest} is damaged (" in line]
  assert "OUT_OF_RANGE" in warning and "is not valid for value of size 10" in warning  # Found by reading it.
  assert warning.endswith(f"moved it to {workdir}/checkpoints_set_aside/{newest} and resumed from checkpoint "
                          f"{saved[-2]}, the newest that restores.")
  assert f"Resumed from checkpoint at step {saved[-2]}." in result.stderr
  assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr  # Orbax's leftovers.
  assert str(newest) in os.listdir(os.path.join(workdir, "checkpoints_set_aside"))
  assert_same_run(workdir, reference)
