"""The same run on 1 device and on 8 (fake CPU) devices gives the same training."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, read_checkpoint
from jaxtrain import train
from test_train import tiny_config

ON_DEVICES = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count={devices}"
sys.path.insert(0, {tests!r})
import jax
from jaxtrain import train
from test_train import tiny_config
assert jax.device_count() == {devices}
train.run(tiny_config(cnn=True), {workdir!r})
"""


def run_on(devices, workdir):
  script = ON_DEVICES.format(devices=devices, tests=os.path.dirname(__file__), workdir=workdir)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]


def losses_and_state(workdir, like=None):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  losses = [r["train/loss"] for r in rows if "train/loss" in r]
  accuracy = [r["val/accuracy"] for r in rows if "val/accuracy" in r]
  # `like` gives the target shapes and shardings: an 8-device checkpoint restores on 1 device.
  return losses, accuracy, read_checkpoint(workdir, 30, like)


def test_eight_devices_match_one(tfds_dir, tmp_path):
  one, eight = str(tmp_path / "one"), str(tmp_path / "eight")
  train.run(tiny_config(cnn=True), one)
  run_on(8, eight)

  losses_1, accuracy_1, state_1 = losses_and_state(one)
  losses_8, accuracy_8, state_8 = losses_and_state(eight, like=state_1)
  np.testing.assert_allclose(losses_8, losses_1, rtol=1e-4)
  np.testing.assert_allclose(accuracy_8, accuracy_1, atol=1 / 359)  # At most one example flips.
  # Params and batch statistics (computed over the global batch, across devices).
  for a, b in zip(jax.tree.leaves(state_1), jax.tree.leaves(state_8), strict=True):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-3, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 4])
def test_a_run_saved_on_eight_devices_resumes_on_fewer(tfds_dir, tmp_path, devices):
  one, moved = str(tmp_path / "one"), str(tmp_path / "moved")
  train.run(tiny_config(cnn=True), one)
  run_on(8, moved)
  shutil.rmtree(os.path.join(moved, "checkpoints", "30"))  # As if stopped after saving step 20 on 8 devices...
  run_on(devices, moved)  # ...which restores on `devices` (global arrays, resharded) and finishes.
  losses_1, accuracy_1, state_1 = losses_and_state(one)
  losses_m, accuracy_m, state_m = losses_and_state(moved, like=state_1)
  np.testing.assert_allclose(losses_m, losses_1, rtol=1e-4)
  np.testing.assert_allclose(accuracy_m, accuracy_1, atol=1 / 359)
  for a, b in zip(jax.tree.leaves(state_1), jax.tree.leaves(state_m), strict=True):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-3, atol=1e-5)


def test_a_batch_the_devices_cannot_divide_is_one_line(tfds_dir, tmp_path):
  digits = os.path.join(ROOT, "experiments", "digits.py")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  result = subprocess.run([sys.executable, "-m", "jaxtrain.launch", f"--config={digits}",
                           f"--workdir={tmp_path / 'run'}", "--config.input.batch_size=36"],
                          capture_output=True, text=True, timeout=300, check=False, env=env)
  assert result.returncode == 2
  assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
      "error: input.batch_size=36 cannot be split evenly over 8 devices; use a positive multiple of 8"]
  assert not (tmp_path / "run").exists()
