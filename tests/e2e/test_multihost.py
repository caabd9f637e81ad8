"""Real processes on 127.0.0.1 (gloo CPU collectives) train as one process with as many
devices: started with the launcher's flags or, as under srun, with SLURM's variables only;
a checkpoint they write resumes in one process; and when one of them is killed, the other
stops at once with one line, and running both again finishes the run."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, read_checkpoint
from jaxtrain.rundir import layout
from jaxtrain.rundir import peers
from test_interruptions import ARGS, TOTAL, assert_same_run, rows, wait_for_step

pytestmark = pytest.mark.slow


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_two(workdir, *more, devices=1, slurm=False):
  """Two processes of `devices` CPU devices each, told about each other by flags or by
  the variables srun sets (JAX's own SLURM detection; JAX_COORDINATOR_PORT picks the port)."""
  port = free_port()
  processes = []
  for i in range(2):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    if slurm:
      env.update(SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="127.0.0.1", SLURM_NTASKS="2", SLURM_PROCID=str(i),
                 SLURM_LOCALID=str(i), JAX_COORDINATOR_PORT=str(port))
      cluster = []
    else:
      cluster = [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"]
    processes.append(subprocess.Popen(
        [sys.executable, "-m", "jaxtrain.launch", f"--workdir={workdir}", *ARGS, *more, *cluster],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
  return processes


def finish_two(workdir, *more, **kwargs):
  processes = start_two(workdir, *more, **kwargs)
  stderrs = []
  with killed_at_the_end(processes):
    for p in processes:
      _, stderr = p.communicate(timeout=300)
      assert p.returncode == 0, stderr[-3000:]
      stderrs.append(stderr)
  return stderrs


@contextlib.contextmanager
def killed_at_the_end(processes):
  """A test that fails or times out leaves no process behind (a hung pair would keep its
  CPU and its port)."""
  try:
    yield
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
        p.wait()


def finish_one(workdir, *more, devices):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  result = subprocess.run([sys.executable, "-m", "jaxtrain.launch", f"--workdir={workdir}", *ARGS, *more], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def assert_close_runs(workdir, reference):
  """The same global batches: metric rows and final params equal up to the order of float sums."""
  one, two = rows(workdir), rows(reference)
  assert [sorted(r) for r in one] == [sorted(r) for r in two]
  for a, b in zip(one, two):
    for key in a:
      assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key)
  for a, b in zip(jax.tree.leaves(read_checkpoint(reference, TOTAL)), jax.tree.leaves(read_checkpoint(workdir, TOTAL)),
                  strict=True):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-3, atol=1e-5)  # 300 Adam steps of drift.


@pytest.fixture(scope="module")
def two_process_reference(tfds_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("reference2") / "run")
  finish_two(workdir)
  return workdir


@pytest.fixture(scope="module")
def four_devices(tfds_dir, tmp_path_factory):
  """One process with four devices: what two processes of two devices each must match."""
  workdir = str(tmp_path_factory.mktemp("four") / "run")
  finish_one(workdir, devices=4)
  return workdir


def test_two_processes_log_one_set_of_rows_and_count_every_eval_example(two_process_reference):
  val_rows = [r for r in rows(two_process_reference) if "val/num_examples" in r]
  assert [r["step"] for r in val_rows] == [100, 200, 300] and all(r["val/num_examples"] == 359 for r in val_rows)


def test_sigterm_to_one_process_stops_both_at_the_same_step_and_they_resume(two_process_reference, tmp_path):
  workdir = str(tmp_path / "run")
  processes = start_two(workdir)
  steps = []
  with killed_at_the_end(processes):
    wait_for_step(processes[0], workdir, 60)
    processes[1].send_signal(signal.SIGTERM)  # Only one host hears it, as on a real cluster.
    for p in processes:
      _, stderr = p.communicate(timeout=120)
      assert p.returncode == 128 + signal.SIGTERM, stderr[-3000:]
      [line] = [line for line in stderr.splitlines() if "preempted (SIGTERM)" in line]
      steps.append(int(line.split("at step ")[1].split(";")[0]))
  assert steps[0] == steps[1] >= 60
  assert max(int(name) for name in os.listdir(os.path.join(workdir, "checkpoints"))) == steps[0]
  finish_two(workdir)
  assert_same_run(workdir, two_process_reference)


@pytest.mark.parametrize("where", ["training", "saving"])
def test_a_killed_process_stops_the_other_at_once_in_one_line_and_running_both_again_resumes(
    two_process_reference, tmp_path, where):
  """Before: the survivor raised at once (gloo: 'Connection closed by peer') but then waited
  85 s in JAX's shutdown barrier and aborted (exit -6, 83 lines of stderr, a C++ stack);
  inside a save, where nothing raises, it waited 67 s. Now: well under a second, one line."""
  workdir = str(tmp_path / "run")
  # Saving every step keeps the survivor inside Orbax's save (and its barriers) most of the time.
  processes = start_two(workdir, *(["--config.checkpoint.every_steps=1"] if where == "saving" else []))
  with killed_at_the_end(processes):
    wait_for_step(processes[0], workdir, 60)  # Checkpoints exist.
    processes[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    _, stderr = processes[0].communicate(timeout=120)
    took = time.monotonic() - killed
    processes[1].wait()
  assert took < 20, f"the survivor took {took:.1f} s"
  assert processes[0].returncode == peers.EXIT_STATUS, stderr[-3000:]
  newest = layout.newest_complete_step(workdir)
  assert newest is not None and newest >= 25
  [line] = [line for line in stderr.splitlines() if line.startswith("error:")]
  assert line.startswith("error: lost a peer process of this 2-process run (")
  assert line.endswith(f"the checkpoints in {workdir}/checkpoints are intact: run all 2 processes again to resume "
                       f"from checkpoint {newest}")
  for noise in ("Traceback", "Check failure", "Fatal Python error", "coordination_service", "Exception"):
    assert noise not in stderr, stderr[-3000:]
  stderrs = finish_two(workdir)  # The checkpoint named resumes, and the run ends as if never stopped.
  assert all(f"Resumed from checkpoint at step {newest}." in e for e in stderrs)
  assert_same_run(workdir, two_process_reference)


def test_two_processes_train_as_one_process_with_two_devices(two_process_reference, tmp_path):
  workdir = str(tmp_path / "one")
  finish_one(workdir, devices=2)
  assert_close_runs(workdir, two_process_reference)


def test_two_processes_of_two_devices_train_as_one_process_of_four(four_devices, tmp_path):
  workdir = str(tmp_path / "two")
  finish_two(workdir, devices=2)
  assert_close_runs(workdir, four_devices)


def test_slurm_variables_alone_start_the_processes(two_process_reference, tmp_path):
  workdir = str(tmp_path / "slurm")
  stderrs = finish_two(workdir, slurm=True)
  assert all(f"Process {i} of 2 (found by slurm)." in stderr for i, stderr in enumerate(stderrs))
  assert_same_run(workdir, two_process_reference)  # The very same run as with the flags.


def test_a_checkpoint_written_by_two_processes_with_fsdp_resumes_in_one(four_devices, tmp_path):
  workdir = str(tmp_path / "moved")
  fsdp = ["--config.parallel.mesh.data=1", "--config.parallel.mesh.fsdp=-1", "--config.parallel.fsdp_min_size=0"]
  finish_two(workdir, *fsdp, devices=2)
  for name in os.listdir(os.path.join(workdir, "checkpoints")):
    if int(name) > 150:  # As if the two processes had stopped after saving step 150...
      shutil.rmtree(os.path.join(workdir, "checkpoints", name))
  result = finish_one(workdir, devices=4)  # ...and one process, data parallel over 4 devices, took over.
  assert "Resumed from checkpoint at step 150." in result.stderr
  assert_close_runs(workdir, four_devices)


def test_pmap_on_two_processes_of_two_devices_trains_as_on_one_process_of_four(tmp_path):
  """pmap's per-device BatchNorm statistics and dropout masks differ from jit's, so its
  reference is pmap on one process: the same four devices, the same four slices."""
  pmap = "--config.parallel.strategy=pmap"
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  finish_one(one, pmap, devices=4)
  finish_two(two, pmap, devices=2)
  assert_close_runs(two, one)
