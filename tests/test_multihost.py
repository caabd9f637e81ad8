"""Two real processes on 127.0.0.1 (gloo CPU collectives), one CPU device each."""

import os
import signal
import socket
import subprocess
import sys

import pytest

from test_interruptions import ARGS, assert_same_run, rows, wait_for_step
from conftest import ROOT

pytestmark = pytest.mark.slow


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_two(workdir):
  port = free_port()
  return [subprocess.Popen([sys.executable, "-m", "jaxtrain.launch", f"--workdir={workdir}", *ARGS,
                            f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for i in range(2)]


def finish_two(workdir):
  processes = start_two(workdir)
  for p in processes:
    _, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, stderr[-3000:]


@pytest.fixture(scope="module")
def two_process_reference(tfds_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("reference2") / "run")
  finish_two(workdir)
  return workdir


def test_two_processes_log_one_set_of_rows_and_count_every_eval_example(two_process_reference):
  val_rows = [r for r in rows(two_process_reference) if "val/num_examples" in r]
  assert [r["step"] for r in val_rows] == [100, 200, 300] and all(r["val/num_examples"] == 359 for r in val_rows)


def test_sigterm_to_one_process_stops_both_at_the_same_step_and_they_resume(two_process_reference, tmp_path):
  workdir = str(tmp_path / "run")
  processes = start_two(workdir)
  wait_for_step(processes[0], workdir, 60)
  processes[1].send_signal(signal.SIGTERM)  # Only one host hears it, as on a real cluster.
  steps = []
  for p in processes:
    _, stderr = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    [line] = [line for line in stderr.splitlines() if "preempted (SIGTERM)" in line]
    steps.append(int(line.split("at step ")[1].split(";")[0]))
  assert steps[0] == steps[1] >= 60
  assert max(int(name) for name in os.listdir(os.path.join(workdir, "checkpoints"))) == steps[0]
  finish_two(workdir)
  assert_same_run(workdir, two_process_reference)


def test_two_processes_train_as_one_process_with_two_devices(two_process_reference, tmp_path):
  workdir = str(tmp_path / "one")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  result = subprocess.run([sys.executable, "-m", "jaxtrain.launch", f"--workdir={workdir}", *ARGS], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  one, two = rows(workdir), rows(two_process_reference)
  assert [sorted(r) for r in one] == [sorted(r) for r in two]
  for a, b in zip(one, two):  # The same global batches: only the order of float reductions may differ.
    for key in a:
      assert a[key] == pytest.approx(b[key], rel=1e-5), (a["step"], key)
