"""--mode=lr_find: the learning-rate range test, and the work directory it leaves untouched."""

import contextlib
import hashlib
import importlib.util
import io
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from jaxtrain.errors import UserError
from jaxtrain.modes import lr_find
from jaxtrain import train
from test_train import tiny_config

STEPS, LR_MIN, LR_MAX = 100, 1e-7, 1e3  # lr_max past the default 10: the tiny MLP's loss explodes by ~15.


def snapshot(directory):
  """Every directory and file under `directory`: contents (sha256), sizes and mtimes."""
  seen = {}
  for root, dirs, files in os.walk(directory):
    for name in dirs:
      path = os.path.join(root, name)
      seen[os.path.relpath(path, directory) + "/"] = os.stat(path).st_mtime_ns
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        seen[os.path.relpath(path, directory)] = (hashlib.sha256(f.read()).hexdigest(), os.stat(path).st_mtime_ns)
  seen["."] = os.stat(directory).st_mtime_ns
  return seen


@pytest.fixture(scope="module")
def finished(tfds_dir, tmp_path_factory):
  """A finished tiny run: its work directory and its snapshot."""
  workdir = str(tmp_path_factory.mktemp("lr_find") / "run")
  train.run(tiny_config(), workdir)
  return workdir, snapshot(workdir)


@pytest.fixture(scope="module")
def found(finished, tmp_path_factory):
  """lr_find on the finished run's config and work directory: (result, printed text, out)."""
  out = str(tmp_path_factory.mktemp("lr_find_out") / "plots" / "lr.png")  # plots/ does not exist yet.
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    result = lr_find.run(tiny_config(), finished[0], out=out, lr_min=LR_MIN, lr_max=LR_MAX, steps=STEPS)
  return result, printed.getvalue(), out


def test_the_work_directory_of_a_finished_run_stays_byte_identical(finished, found):
  workdir, before = finished
  assert snapshot(workdir) == before
  assert not found[0].written.startswith(workdir)


def test_the_ramp_is_exponential_and_stops_once_the_smoothed_loss_is_4x_its_best(found):
  result, printed, _ = found
  n = len(result.lrs)
  np.testing.assert_allclose(result.lrs, [LR_MIN * (LR_MAX / LR_MIN) ** (k / (STEPS - 1)) for k in range(n)],
                             rtol=1e-5)
  assert 30 < n < STEPS  # It stopped early, on the way up.
  average, smoothed = 0.0, []
  for k, loss in enumerate(result.losses):  # Debiased exponential moving average, beta 0.98.
    average = 0.98 * average + 0.02 * loss
    smoothed.append(average / (1 - 0.98 ** (k + 1)))
  np.testing.assert_allclose(result.smoothed, smoothed, rtol=1e-6)
  best = np.minimum.accumulate(smoothed)
  assert all(s <= 4 * b for s, b in zip(smoothed[:-1], best[:-1])) and smoothed[-1] > 4 * best[-1]
  assert max(result.losses) > 10 * min(result.losses)  # The raw loss did explode.
  assert result.stop.startswith(f"the smoothed loss {smoothed[-1]:.4g} at step {n} (lr {result.lrs[-1]:.2e}) "
                                f"is more than 4x its best")
  assert f"Stopped: {result.stop}." in printed
  table = [line for line in printed.splitlines() if re.match(r"\s+\d+\s+\d\.\d\de[+-]\d\d\s", line)]
  assert 5 <= len(table) <= 9 and table[-1].split()[0] == str(n)


def test_the_suggestion_is_the_steepest_descent_before_the_lowest_loss(found):
  result, printed, _ = found
  lrs, smoothed = result.lrs, result.smoothed
  lowest = int(np.argmin(smoothed))
  assert result.min_over_10 == pytest.approx(lrs[lowest] / 10)
  i = lrs.index(result.suggested)
  assert 10 <= i <= lowest  # Inside the ramp, on the way down.
  assert 1e-4 < result.suggested < 1e-1, result.suggested  # Measured: 5.7e-2 for this tiny MLP.
  assert (f"Suggested learning rate: {result.suggested:.1e} (steepest descent of the smoothed loss); "
          f"set --config.optimizer.lr={result.suggested:.1e}") in printed
  assert f"Lowest smoothed loss / 10: {result.min_over_10:.1e}" in printed


def test_suggest_ignores_the_recovery_from_a_spike_and_a_loss_that_never_falls():
  lrs = list(np.geomspace(1e-6, 1.0, 60))
  x = np.log10(lrs)
  curve = 2.0 - 1.5 / (1 + np.exp(-3 * (x + 3)))  # Steepest at 1e-3, lowest at the end of the descent.
  # Then a spike and its recovery, falling faster (0.4 per step) than the descent ever did (0.11).
  curve[40:] = curve[39] + np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 0.6, 0.2] + [0.1] * 8)
  steepest, min_over_10 = lr_find.suggest(lrs, list(curve))
  assert steepest == pytest.approx(1e-3, rel=0.3) and min_over_10 == pytest.approx(lrs[39] / 10)
  assert lr_find.suggest(lrs, list(np.linspace(1.0, 3.0, 60))) == (None, None)


def test_the_plot_is_a_png(found):
  image = pytest.importorskip("matplotlib.image")
  result, printed, out = found
  assert result.written == out and f"Plot: {out}" in printed
  with open(out, "rb") as f:
    data = f.read()
  assert data.startswith(b"\x89PNG\r\n\x1a\n") and 10_000 < len(data) < 200_000
  pixels = image.imread(out)
  assert pixels.shape[:2] == (400, 600)
  colors = np.unique(pixels.reshape(-1, pixels.shape[-1]).round(2), axis=0)
  assert len(colors) > 50  # Lines, text, the marker: not a blank canvas.
  red = (pixels[..., 0] > 0.8) & (pixels[..., 1] < 0.3) & (pixels[..., 2] < 0.3)
  assert red.sum() > 20  # The suggestion's marker (tab:red).
  assert not os.path.exists(os.path.splitext(out)[0] + ".json")


def test_without_matplotlib_one_line_and_the_curve_as_json(tfds_dir, tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError.
  workdir, out = tmp_path / "fresh", tmp_path / "out" / "lr.png"
  result = lr_find.run(tiny_config(), str(workdir), out=str(out), steps=20)
  printed = capsys.readouterr().out
  path = str(tmp_path / "out" / "lr.json")
  assert result.written == path and not out.exists()
  skipped = [line for line in printed.splitlines() if "Plot skipped" in line]
  assert skipped == [f"Plot skipped: matplotlib is not installed (pip install -e '.[plots]'); the curve is in {path}"]
  with open(path, encoding="utf-8") as f:
    curve = json.load(f)
  assert curve["lr"] == result.lrs and len(curve["lr"]) == 20 and curve["stop"] == result.stop
  assert curve["loss"] == result.losses and curve["smoothed_loss"] == result.smoothed
  assert curve["suggested_lr"] == result.suggested and curve["min_loss_lr_over_10"] == result.min_over_10
  assert not workdir.exists()  # Nothing was created for the work directory.
  assert sorted(os.listdir(tmp_path)) == ["out"] and os.listdir(tmp_path / "out") == ["lr.json"]


def test_a_fine_tuning_config_starts_from_its_init_from_weights(finished, found, tmp_path, capsys):
  source, before = finished
  config = tiny_config()
  config.init_from = dict(workdir=source)
  fresh = tmp_path / "finetune"
  result = lr_find.run(config, str(fresh), out=str(tmp_path / "lr.png"), steps=10)
  assert "steps from fresh parameters with init_from, lr" in capsys.readouterr().out
  # The same first batch, at lr 1e-7: the source's loss (measured 2.09), not a random init's (2.36).
  assert result.losses[0] < found[0].losses[0] - 0.15, (result.losses[0], found[0].losses[0])
  assert snapshot(source) == before and not fresh.exists()  # The source run is read, not changed.


@pytest.mark.parametrize("skip_nonfinite", [False, True])
def test_a_non_finite_loss_stops_the_ramp_with_no_suggestion(tfds_dir, tmp_path, capsys, skip_nonfinite):
  config = tiny_config()
  config.skip_nonfinite = skip_nonfinite
  out = tmp_path / "lr.png"
  result = lr_find.run(config, None, out=str(out), lr_min=1e37, lr_max=1e38, steps=10)
  printed = capsys.readouterr().out
  if skip_nonfinite:  # The first update overflows the parameters: skipped, so its loss is not counted.
    assert result.stop == "step 1 (lr 1.00e+37) was skipped: its loss, gradients or new parameters were not finite"
  else:  # Its loss was finite; the next step's is not.
    assert result.stop == "the loss is nan at step 2 (lr 1.29e+37)" and math.isfinite(result.losses[0])
  assert math.isnan(result.losses[-1]) and math.isnan(result.smoothed[-1])
  assert result.suggested is None and result.min_over_10 is None
  assert f"Stopped: {result.stop}.\nNo suggestion: the smoothed loss did not fall before the stop" in printed
  assert "Suggested" not in printed and (out.exists() or (tmp_path / "lr.json").exists())


def no_build(*args, **kwargs):
  raise AssertionError("lr_find built the experiment before refusing")


def test_a_plot_inside_the_work_directory_is_refused_before_anything(finished, tmp_path, monkeypatch):
  monkeypatch.setattr(lr_find.build_lib, "build", no_build)
  workdir, before = finished
  for out in (os.path.join(workdir, "lr.png"), os.path.join(workdir, "plots", "lr.png"), workdir + "/./x/../lr.png"):
    with pytest.raises(UserError) as e:
      lr_find.run(tiny_config(), workdir, out=out)
    assert "\n" not in str(e.value)
    assert str(e.value).startswith(f"--lr_find_out={out} lies inside --workdir={workdir}, which lr_find leaves "
                                   f"byte-identical; write the plot elsewhere")
  assert snapshot(workdir) == before
  fresh = tmp_path / "fresh"
  with pytest.raises(UserError, match="lies inside --workdir"):
    lr_find.run(tiny_config(), str(fresh), out=str(fresh / "lr.png"))
  assert not fresh.exists()


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr_min=0.0), "--lr_find_min=0 and --lr_find_max=10 must satisfy 0 < min < max"),
    (dict(lr_min=1.0, lr_max=0.1), "--lr_find_min=1 and --lr_find_max=0.1 must satisfy 0 < min < max"),
    (dict(steps=5), "--lr_find_steps=5 is too short for a range test; use at least 10 (default 100)"),
    (dict(out="lr.txt"), "--lr_find_out=lr.txt must end in .png, .pdf, .svg"),
    (dict(out="."), "--lr_find_out=. is a directory; name a file in it, e.g. ./lr_find.png"),
    (dict(out="/dev/null/lr.png"), "--lr_find_out=/dev/null/lr.png: /dev/null is not a writable directory; pick "
                                   "another path"),
])
def test_argument_mistakes_are_one_line_before_anything(kwargs, message, tmp_path, monkeypatch):
  monkeypatch.setattr(lr_find.build_lib, "build", no_build)
  monkeypatch.chdir(tmp_path)
  with pytest.raises(UserError) as e:
    lr_find.run(tiny_config(), str(tmp_path / "run"), **kwargs)
  assert str(e.value) == message
  assert os.listdir(tmp_path) == []


def test_the_command_line_prints_the_suggestion_for_digits(tfds_dir, tmp_path):
  workdir, out = tmp_path / "run", tmp_path / "plots" / "lr.png"
  result = subprocess.run([sys.executable, "-m", "jaxtrain.launch", "--config=experiments/digits.py",
                           f"--workdir={workdir}", "--mode=lr_find", f"--lr_find_out={out}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  found = re.search(r"^Suggested learning rate: (\S+) \(steepest descent of the smoothed loss\); "
                    r"set --config\.optimizer\.lr=(\S+)$", result.stdout, re.M)
  assert found and found.group(1) == found.group(2), result.stdout
  assert 1e-4 < float(found.group(1)) < 1e-1  # Measured: 2.3e-03; the experiment trains at 3e-3.
  assert "Lowest smoothed loss / 10:" in result.stdout and "the config has optimizer.lr=0.003" in result.stdout
  assert not workdir.exists()
  if importlib.util.find_spec("matplotlib"):
    assert os.listdir(out.parent) == ["lr.png"]
  else:
    assert os.listdir(out.parent) == ["lr.json"]
    assert math.isfinite(json.loads((out.parent / "lr.json").read_text())["lr"][-1])
