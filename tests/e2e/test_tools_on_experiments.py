"""The tools around the loop on the language-model experiments, from the command line as a
user runs them: --mode=dry_run, jaxtrain.sweep, jaxtrain.runs, jaxtrain.plot and
--mode=lr_find on experiments/code_lm.py and experiments/email_assistant.py. (Digits: each
tool's own test file.) Shrunk by --config overrides, as one tries a tool before a long run;
the dry run alone runs at the experiments' own size, since it runs no step."""

import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from test_email_assistant import demo_mailbox

pytestmark = pytest.mark.slow  # About 2 minutes: code_lm's corpus and tokenizer are built first (~45 s).

TINY = ("--config.model.dim=32", "--config.model.num_layers=1", "--config.model.num_heads=2",
        "--config.model.num_kv_heads=1", "--config.model.mlp_dim=64")
TIMING = ("train/steps_per_sec", "train/examples_per_sec", "train/eta_seconds", "train/train_seconds")


def launch(module, *args):
  """`python -m module args` from the repository: its stdout (it must exit 0)."""
  result = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, check=False)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return result.stdout


def tree_digest(directory):
  """Every path under `directory` with its bytes' hash and modification time."""
  out = {}
  for root, dirs, files in os.walk(directory):
    for name in dirs + files:
      path = os.path.join(root, name)
      content = None
      if os.path.isfile(path):
        with open(path, "rb") as f:
          content = hashlib.sha256(f.read()).hexdigest()
      out[os.path.relpath(path, directory)] = (content, os.stat(path).st_mtime_ns)
  return out


def last(run, metric):
  """(value, step) of `metric` in the run's last row that has it."""
  with open(os.path.join(run, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  row = [r for r in rows if metric in r][-1]
  return row[metric], row["step"]


def ratio(out, estimate):
  """The dry run's `compiled / this` for the FLOPs row that starts with `estimate`."""
  found = re.search(rf"^  {re.escape(estimate)}.* compiled / this = (\d\.\d+)$", out, re.M)
  assert found, out
  return float(found.group(1))


def table(text):
  """The rows of the first markdown table in `text`, as {column: cell} dicts."""
  lines = [line for line in text.splitlines() if line.startswith("|")]
  cells = lambda line: [c.strip() for c in line.split("|")[1:-1]]  # noqa: E731
  return [dict(zip(cells(lines[0]), cells(line))) for line in lines[2:]]


def check_sweep_runs_and_plot(sweep_dir, names, lrs, tmp_path):
  """The sweep's table, `jaxtrain.runs` and `jaxtrain.plot` against the runs' metrics.jsonl."""
  runs = [os.path.join(sweep_dir, name) for name in names]
  val = {run: "{:.4g} @ {}".format(*last(run, "val/loss")) for run in runs}
  with open(os.path.join(sweep_dir, "sweep.md"), encoding="utf-8") as f:
    swept = table(f.read())
  ordered = sorted(runs, key=lambda run: last(run, "val/loss")[0])  # Sorted by val/loss, lower first.
  assert [row["run"] for row in swept] == [os.path.basename(run) for run in ordered]
  assert [row["val/loss final"] for row in swept] == [val[run] for run in ordered]

  rows = table(launch("jaxtrain.runs", *runs))
  assert list(rows[0])[:2] == ["run", "optimizer.lr"]  # The one config value that differs.
  assert [row["run"] for row in rows] == runs and [float(row["optimizer.lr"]) for row in rows] == lrs
  assert [row["val/loss final"] for row in rows] == [val[run] for run in runs]

  png = tmp_path / "curves.png"
  args = ("jaxtrain.plot", *runs, "--metrics=train/loss,val/loss", f"--out={png}")
  if importlib.util.find_spec("matplotlib"):
    assert launch(*args) == f"wrote {png}: train/loss, val/loss of 2 runs against step\n"
    with open(png, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  else:
    result = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 2 and not png.exists()
    assert result.stderr.strip().splitlines()[-1] == "error: matplotlib is not installed: pip install -e '.[plots]'"


def check_lr_find(config_args, finished_run, tmp_path):
  """--mode=lr_find with a finished run as --workdir: a suggestion, and the run untouched."""
  before = tree_digest(finished_run)
  out = launch("jaxtrain.launch", *config_args, f"--workdir={finished_run}", "--mode=lr_find",
               "--lr_find_steps=30", f"--lr_find_out={tmp_path / 'lr.png'}")
  found = re.search(r"^Suggested learning rate: (\S+) \(steepest descent of the smoothed loss\); "
                    r"set --config\.optimizer\.lr=(\S+)$", out, re.M)
  assert found and found.group(1) == found.group(2), out
  assert 1e-7 <= float(found.group(1)) <= 10.0  # Inside the default ramp, 1e-7 to 10.
  assert tree_digest(finished_run) == before
  plotted = tmp_path / ("lr.png" if importlib.util.find_spec("matplotlib") else "lr.json")  # The curve, elsewhere.
  assert plotted.exists()
  plotted.unlink()


def test_code_lm(tfds_dir, tmp_path):
  config = "--config=experiments/code_lm.py"

  # The dry run, at the experiment's own size (no step runs).
  out = launch("jaxtrain.launch", config, f"--workdir={tmp_path / 'dry'}", "--mode=dry_run",
               "--accelerator=tpu-v5e")
  assert "Parameters: 4,196,608 (4,196,608 trainable, 0 frozen), 16.0 MiB" in out  # tests/modes/test_dry_run.py counts them.
  # Compiled FLOPs against the 6N-per-token estimate, measured 1.012 and 1.072 with attention
  # (PaLM's full square, Kaplan's causal half), 1.139 without.
  assert ratio(out, "6N + 12*L*H*Q*T per token (PaLM") == pytest.approx(1.0, abs=0.10)
  assert ratio(out, "6N + 6*L*H*Q*T per token (Kaplan") == pytest.approx(1.0, abs=0.10)
  assert 1.0 < ratio(out, "6N per token, N = 4,196,608") < 1.2
  whole = re.search(r"^Whole run: 400 steps x ([\d.]+) GFLOP \(compiled step\) = ([\d.]+) TFLOP", out, re.M)
  assert whole and float(whole.group(2)) == pytest.approx(400 * float(whole.group(1)) / 1000, rel=1e-3)
  assert re.search(r"^On tpu-v5e \(197 TFLOP/s per chip, \$1\.20 per chip-hour\): .* of chip time: \$", out, re.M)
  assert not os.path.exists(tmp_path / "dry")

  # A sweep over two learning rates, then its table, the runs table and the plot.
  shrink = (*TINY, "--config.input.batch_size=4", "--config.total_steps=6", "--config.log_every_steps=2",
            "--config.evals.val.every_steps=3", "--config.evals.samples.every_steps=6",
            "--config.evals.samples.max_new_tokens=4", "--config.checkpoint.every_steps=3",
            "--config.schedule.warmup_steps=2")
  sweep_dir = str(tmp_path / "sweep")
  out = launch("jaxtrain.sweep", config, f"--workdir={sweep_dir}", "--sweep=optimizer.lr=1e-3,1e-2",
               "--metric=val/loss", *shrink)
  assert "Sorted by val/loss, final value (lower is better)." in out
  assert last(os.path.join(sweep_dir, "lr_0.001"), "val/loss")[1] == 6
  check_sweep_runs_and_plot(sweep_dir, ["lr_0.001", "lr_0.01"], [1e-3, 1e-2], tmp_path)

  # The learning-rate finder on the experiment, its plot kept out of the finished run.
  check_lr_find((config, *TINY, "--config.input.batch_size=4"), os.path.join(sweep_dir, "lr_0.01"), tmp_path)


def test_email_assistant(pretrained, tmp_path):
  mbox = demo_mailbox(tmp_path / "mail.mbox")
  config = (f"--config=experiments/email_assistant.py:{mbox}", f"--config.init_from.workdir={pretrained}")

  out = launch("jaxtrain.launch", *config, f"--workdir={tmp_path / 'dry'}", "--mode=dry_run")
  # The source's model (tests/tiny_lm.py: dim 32, 2 layers, 4 heads and 2 KV heads of 8,
  # MLP 64, vocabulary 384, untied) with LoRA's rank-8 A and B on its 7 projections.
  base = 384 * 32 * 2 + 2 * (32 * 32 * 2 + 32 * 16 * 2 + 32 * 64 * 3 + 2 * 32) + 32
  lora = 2 * 8 * ((32 + 32) * 2 + (32 + 16) * 2 + (32 + 64) * 3)
  assert f"Parameters: {base + lora:,} ({lora:,} trainable, {base:,} frozen)" in out
  steps = re.search(r"; global batch 4; (\d+) steps\.$", out, re.M)  # 2 epochs of the mailbox's rows.
  assert steps and re.search(rf"^Whole run: {steps.group(1)} steps x ", out, re.M)
  assert not os.path.exists(tmp_path / "dry")

  shrink = ("--config.total_steps=6", "--config.log_every_steps=2", "--config.evals.val.every_steps=3",
            "--config.evals.samples.every_steps=6", "--config.evals.samples.max_new_tokens=4",
            "--config.checkpoint.every_steps=3", "--config.schedule.warmup_steps=2")
  sweep_dir = str(tmp_path / "sweep")
  out = launch("jaxtrain.sweep", *config, f"--workdir={sweep_dir}", "--sweep=optimizer.lr=1e-4,1e-2",
               "--metric=val/loss", *shrink)
  assert "Sorted by val/loss, final value (lower is better)." in out
  check_sweep_runs_and_plot(sweep_dir, ["lr_0.0001", "lr_0.01"], [1e-4, 1e-2], tmp_path)

  check_lr_find(config, os.path.join(sweep_dir, "lr_0.01"), tmp_path)
