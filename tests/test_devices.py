"""The same run on 1 device and on 8 (fake CPU) devices gives the same training."""

import json
import os
import subprocess
import sys

import jax
import numpy as np

from conftest import read_checkpoint
from jaxtrain import train
from test_train import tiny_config

EIGHT_DEVICES = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
sys.path.insert(0, {tests!r})
import jax
from jaxtrain import train
from test_train import tiny_config
assert jax.device_count() == 8
train.run(tiny_config(cnn=True), {workdir!r})
"""


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
  script = EIGHT_DEVICES.format(tests=os.path.dirname(__file__), workdir=eight)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]

  losses_1, accuracy_1, state_1 = losses_and_state(one)
  losses_8, accuracy_8, state_8 = losses_and_state(eight, like=state_1)
  np.testing.assert_allclose(losses_8, losses_1, rtol=1e-4)
  np.testing.assert_allclose(accuracy_8, accuracy_1, atol=1 / 359)  # At most one example flips.
  # Params and batch statistics (computed over the global batch, across devices).
  for a, b in zip(jax.tree.leaves(state_1), jax.tree.leaves(state_8), strict=True):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-3, atol=1e-5)
