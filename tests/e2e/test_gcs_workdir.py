"""Work directories on Cloud Storage (`--workdir=gs://BUCKET/PATH`), against a local
emulator (tests/gcs_emulator.py): every resume guarantee test_interruptions.py shows on a
local disk, shown again there. A run killed, preempted or left with a damaged checkpoint
on gs:// ends with the rows and parameters of one uninterrupted run on local disk; a
second live run is refused; a bad bucket is one line."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import test_interruptions
from conftest import ROOT, read_checkpoint, tiny_lm
from jaxtrain.errors import UserError
from jaxtrain.lm import export as export_lib
from jaxtrain.lm import language_model as lm_lib
from jaxtrain.modes import evaluate
from jaxtrain.rundir import lock as workdir_lock
from jaxtrain.rundir import storage
from jaxtrain import runs
from jaxtrain import train
from test_interruptions import ARGS, TOTAL, assert_same_run, finish, preempt, rows, start, wait_for_step
from test_multihost import assert_close_runs, finish_two

pytestmark = pytest.mark.slow
reference = test_interruptions.reference  # The fixture: the uninterrupted run, on local disk.


def kill(process):
  process.send_signal(signal.SIGKILL)
  process.wait()


def checkpoints(workdir):
  """The complete checkpoints: Orbax marks a step complete last, with commit_success.txt."""
  return sorted(int(name) for name in storage.listdir(f"{workdir}/checkpoints")
                if name.isdigit() and storage.isfile(f"{workdir}/checkpoints/{name}/commit_success.txt"))


def test_killed_twice_on_gcs_ends_as_the_uninterrupted_local_run(bucket, reference):
  workdir = f"{bucket}/killed"
  for stop_after in (60, 200):  # Between checkpoints, and after an evaluation.
    process = start(workdir)
    wait_for_step(process, workdir, stop_after)
    kill(process)  # Its lock object stays behind, naming a process of this host that has ended.
  assert storage.exists(f"{workdir}/.lock")
  # The last resume changes a key that changes no number: logged, and the old config kept.
  resumed_at = checkpoints(workdir)[-1]
  result = subprocess.run([sys.executable, "-m", "jaxtrain.launch", f"--workdir={workdir}", *ARGS,
                           "--config.checkpoint.keep=99"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Took over the lock of --workdir=" in result.stderr and "it is not running on this host" in result.stderr
  assert f"Resuming at step {resumed_at} with a changed config: checkpoint.keep 100 -> 99." in result.stderr
  old = json.loads(storage.read_text(f"{workdir}/config_history/until_step_{resumed_at}.json"))
  assert old["checkpoint"]["keep"] == 100
  assert json.loads(storage.read_text(f"{workdir}/config.json"))["checkpoint"]["keep"] == 99
  assert_same_run(workdir, reference)
  assert not storage.exists(f"{workdir}/.lock")  # Released at the end.
  assert storage.listdir(f"{workdir}/tensorboard")  # Event files, one per start.


def test_sigterm_on_gcs_saves_and_the_same_command_resumes(bucket, reference):
  workdir = f"{bucket}/preempted"
  preempt(workdir)
  assert not storage.exists(f"{workdir}/.lock")  # A clean exit releases it.
  finish(workdir)
  assert_same_run(workdir, reference)


def test_a_damaged_newest_checkpoint_on_gcs_is_set_aside(bucket, reference):
  workdir = f"{bucket}/damaged"
  process = start(workdir)
  wait_for_step(process, workdir, 160)
  kill(process)
  saved = checkpoints(workdir)
  newest = saved[-1]
  data = f"{workdir}/checkpoints/{newest}/params/ocdbt.process_0/d"
  for name in storage.listdir(data):  # As a bad copy would leave it.
    storage.write_text(f"{data}/{name}", "truncated!")
  result = finish(workdir)
  [warning] = [line for line in result.stderr.splitlines() if f"checkpoints/{newest} is damaged (" in line]
  assert "OUT_OF_RANGE" in warning  # Found by reading it, through TensorStore's gcs driver.
  assert warning.endswith(f"moved it to {workdir}/checkpoints_set_aside/{newest} and resumed from checkpoint "
                          f"{saved[-2]}, the newest that restores.")
  assert storage.isfile(f"{workdir}/checkpoints_set_aside/{newest}/commit_success.txt")
  assert newest not in checkpoints(workdir)[:-1] and "Traceback" not in result.stderr, result.stderr
  assert_same_run(workdir, reference)


def test_a_second_live_run_is_refused(bucket):
  workdir = f"{bucket}/live"
  long_run = "--config.total_steps=1000000"
  process = start(workdir, long_run)
  try:
    wait_for_step(process, workdir, 20)
    second = subprocess.run([sys.executable, "-m", "jaxtrain.launch", f"--workdir={workdir}", *ARGS, long_run],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert second.returncode == 2, second.stderr[-3000:]
    [line] = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: --workdir={workdir} is in use by a live run (pid {process.pid} on ")
    assert "s ago); wait for it to end, stop it, or pick another directory" in line
    assert process.poll() is None  # Not disturbed.
  finally:
    kill(process)


def test_a_run_whose_lock_was_taken_over_stops_at_its_next_refresh(bucket):
  workdir = f"{bucket}/overtaken"
  process = start(workdir, "--config.total_steps=1000000")
  try:
    wait_for_step(process, workdir, 20)
    storage.write_text(f"{workdir}/.lock", "pid 1 on another-host")  # As a run that took over a stale lock.
    _, stderr = process.communicate(timeout=workdir_lock.REFRESH_SECONDS + 60)
  finally:
    kill(process)
  assert process.returncode == workdir_lock.LOST_LOCK_EXIT
  assert stderr.strip().splitlines()[-1] == (
      f"error: the lock of --workdir={workdir} was taken over by another run (this run could not refresh it for "
      f"90 s); stopping now without writing more: the other run goes on from the newest checkpoint")


def test_a_stale_lock_is_taken_over_and_a_fresh_one_is_not(bucket, monkeypatch):
  workdir = f"{bucket}/stale"
  monkeypatch.setattr(workdir_lock, "STALE_SECONDS", 1.0)
  monkeypatch.setattr(workdir_lock, "REFRESH_SECONDS", 0.2)
  storage.write_text(f"{workdir}/.lock", "pid 1 on another-host")  # A VM that was preempted.
  with pytest.raises(UserError, match=rf"^--workdir={workdir} is in use by a live run \(pid 1 on another-host, "
                                      r"lock refreshed [0-9]+ s ago\)"):
    workdir_lock.lock_for(workdir).acquire()
  time.sleep(1.5)
  lock = workdir_lock.lock_for(workdir).acquire()
  try:
    first = lock._generation  # pylint: disable=protected-access
    time.sleep(0.7)
    assert lock._generation != first  # Refreshed while it lives.  pylint: disable=protected-access
    assert storage.read_text(f"{workdir}/.lock") == f"pid {os.getpid()} on {os.uname().nodename}"
    with pytest.raises(UserError, match=r"is in use by a live run"):  # Alive, and on this very host.
      workdir_lock.lock_for(workdir).acquire()
  finally:
    lock.release()
  assert not storage.exists(f"{workdir}/.lock")


def test_a_bucket_that_does_not_exist_is_one_line_before_any_work(bucket):
  del bucket  # The emulator, without this bucket.
  result = subprocess.run([sys.executable, "-m", "jaxtrain.launch", "--workdir=gs://no-such-bucket/run", *ARGS],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      "error: --workdir=gs://no-such-bucket/run: bucket gs://no-such-bucket does not exist; create it "
      "(gcloud storage buckets create gs://no-such-bucket) or fix the name")


def test_two_processes_write_one_bucket_work_directory_as_one_process_writes_a_disk(bucket, reference):
  """Process 0 alone writes the shared files (rows, config, events, the lock); every
  process writes its own shards of each checkpoint."""
  workdir = f"{bucket}/two"
  finish_two(workdir)
  assert_close_runs(workdir, reference)  # One set of rows, not two; the order of float sums aside.
  assert len(storage.listdir(f"{workdir}/tensorboard")) == 1 and not storage.exists(f"{workdir}/.lock")
  positions = [name for name in storage.listdir(f"{workdir}/checkpoints/{TOTAL}/data") if name.endswith(".json")]
  assert sorted(positions) == ["process_0-of-2.json", "process_1-of-2.json"]


def test_the_readers_take_a_run_on_gcs_as_one_on_disk(bucket, tfds_dir, corpus, tmp_path):
  """jaxtrain.runs, lm.load, --mode=eval, export and init_from on a tiny LM trained on
  gs://, against the same run trained on local disk."""
  config = tiny_lm(corpus)
  config.total_steps = 20
  local, remote = str(tmp_path / "lm"), f"{bucket}/lm"
  train.run(config, local)
  train.run(config, remote)
  strip = lambda run: [{k: v for k, v in row.items() if not k.endswith(("_per_sec", "_seconds"))}  # noqa: E731
                       for row in run.rows]
  assert strip(runs.load(remote)) == strip(runs.load(local)) and runs.load(remote).config == runs.load(local).config

  tokens = np.arange(24, dtype=np.int32).reshape(2, 12) % 300
  there, here = lm_lib.load(remote), lm_lib.load(local)
  np.testing.assert_array_equal(np.asarray(there.logits(tokens)), np.asarray(here.logits(tokens)))
  assert there.tokenizer.encode("def f(x):") == here.tokenizer.encode("def f(x):")

  assert evaluate.run(config, remote) == evaluate.run(config, local)
  assert rows(remote)[-1]["step"] == 20 and "val/loss" in rows(remote)[-1]  # Its rows went to the bucket.

  export_lib.export(remote, "hf", str(tmp_path / "hf_remote"))
  export_lib.export(local, "hf", str(tmp_path / "hf_local"))
  for name in ("model.safetensors", "config.json", "tokenizer.json"):
    assert (tmp_path / "hf_remote" / name).read_bytes() == (tmp_path / "hf_local" / name).read_bytes(), name

  # A run (here, on disk) that starts from the run on the bucket, its architecture and tokenizer.
  tuned = tiny_lm(corpus)
  tuned.total_steps = tuned.checkpoint.every_steps = 2
  tuned.schedule.warmup_steps = 1
  with tuned.unlocked():
    tuned.init_from = dict(workdir=remote, model=True)
    tuned.input.data.tokenizer = None
  train.run(tuned, str(tmp_path / "tuned"))
  with tuned.unlocked():
    tuned.init_from.workdir = local
  train.run(tuned, str(tmp_path / "tuned_local"))
  for a, b in zip(jax.tree.leaves(read_checkpoint(str(tmp_path / "tuned"), 2)),
                  jax.tree.leaves(read_checkpoint(str(tmp_path / "tuned_local"), 2)), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
