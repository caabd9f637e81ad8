"""--mode=dry_run: parameter counts, FLOPs, memory and cost, and nothing written."""

import hashlib
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxtrain.config import Reader
from jaxtrain.errors import UserError
from jaxtrain import models
from jaxtrain.modes import dry_run
from jaxtrain import train
from conftest import ROOT, load_experiment, tiny_lm
from test_train import tiny_config


def independent_counts(model_config, example):
  """{top-level module: parameters} of the model built and initialised outside jaxtrain's build."""
  module = models.build(Reader(model_config))
  params = module.init(jax.random.PRNGKey(0), example, train=False)["params"]
  return {name: sum(x.size for x in jax.tree.leaves(tree)) for name, tree in params.items()}


def tree_digest(directory):
  """Every path under `directory` with its bytes' hash (directories too, empty ones included)."""
  out = {}
  for root, dirs, files in os.walk(directory):
    for name in dirs:
      out[os.path.relpath(os.path.join(root, name), directory) + "/"] = None
    for name in files:
      with open(os.path.join(root, name), "rb") as f:
        out[os.path.relpath(os.path.join(root, name), directory)] = hashlib.sha256(f.read()).hexdigest()
  return out


def test_digits_counts_flops_memory_and_cost(tfds_dir, tmp_path, capsys):
  workdir = str(tmp_path / "absent" / "run")
  report = dry_run.run(tiny_config(), workdir, accelerator="tpu-v5e")
  assert not os.path.exists(str(tmp_path / "absent"))  # Not even created.

  counts = independent_counts(tiny_config().model, np.zeros((1, 8, 8, 1), np.float32))
  params = report["parameters"]
  assert params["total"] == sum(counts.values()) == 64 * 32 + 32 + 32 * 10 + 10
  assert params["trainable"] == params["total"]
  assert {name: row["count"] for name, row in params["modules"].items()} == counts
  assert params["bytes"] == 4 * params["total"]

  flops = report["flops"]
  assert flops["per_step"] > 0 and flops["per_step"] == flops["per_device"] * jax.device_count()
  assert "six_n" not in flops  # Not a language model.
  memory = report["memory"]
  assert memory["params"] == 4 * params["total"] and memory["opt_state"] >= 2 * memory["params"]
  assert memory["batch"] == 32 * (64 + 10) * 4  # Images and one-hot labels, float32.
  assert memory["arguments"] == memory["params"] + memory["opt_state"] + memory["other_state"] + memory["batch"]
  assert memory["temporaries"] > 0 and memory["total"] <= memory["capacity"]

  whole = report["run"]
  assert whole["total_flops"] == flops["per_step"] * 30
  v5e = whole["target"]
  assert v5e["name"] == "tpu-v5e" and v5e["peak_tflops"] == 197.0 and v5e["price"] == 1.20
  assert v5e["hours_at_peak"] == pytest.approx(whole["total_flops"] / 197e12 / 3600)
  assert v5e["cost"] == pytest.approx(v5e["hours_at_peak"] / dry_run.TYPICAL_UTILIZATION * 1.20)
  assert set(whole["accelerators"]) == set(dry_run.ACCELERATORS)

  out = capsys.readouterr().out
  assert f"Parameters: {params['total']:,} ({params['total']:,} trainable, 0 frozen)" in out
  assert "  * tpu-v5e " in out and "On tpu-v5e (197 TFLOP/s per chip, $1.20 per chip-hour)" in out
  assert "6N" not in out


def test_frozen_parameters_and_flag_overrides(tfds_dir, tmp_path, capsys):
  c = tiny_config()
  c.optimizer.freeze = ("Dense_0/",)
  report = dry_run.run(c, str(tmp_path / "run"), peak_tflops=100.0, price_per_hour=2.0)
  params = report["parameters"]
  assert params["trainable"] == 32 * 10 + 10 and params["total"] == 2080 + 330
  assert params["modules"]["Dense_0"] == dict(count=2080, trainable=0, bytes=4 * 2080)
  # No optimizer state for frozen parameters: Adam's two moments of the head alone.
  assert report["memory"]["opt_state"] < 3 * 4 * 330
  target = report["run"]["target"]
  assert target["name"] == "the flags' device" and target["from_flags"]
  assert target["cost_at_peak"] == pytest.approx(report["run"]["total_flops"] / 100e12 / 3600 * 2.0)
  out = capsys.readouterr().out
  assert "Parameters: 2,410 (330 trainable, 2,080 frozen)" in out
  assert "On the flags' device (100 TFLOP/s per chip, $2.00 per chip-hour)" in out
  assert not os.path.exists(str(tmp_path / "run"))


def test_a_finished_run_is_left_byte_for_byte(tfds_dir, tmp_path, capsys):
  workdir = str(tmp_path / "run")
  train.run(tiny_config(), workdir)
  before = tree_digest(workdir)
  assert "metrics.jsonl" in before and "checkpoints/30/" in before
  report = dry_run.run(tiny_config(), workdir, accelerator="h100")
  assert tree_digest(workdir) == before
  assert report["resume_step"] == 30
  assert "0 steps left after checkpoint 30 in --workdir" in capsys.readouterr().out


def test_a_step_that_does_not_fit_is_one_line_after_the_report(tfds_dir, tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(dry_run, "device_capacity", lambda: (16 * 2**10, "a pretend device"))
  with pytest.raises(UserError, match=r"^does not fit: the train step needs \d+\.\d (KiB|MiB) per device, the device "
                                      r"has 16\.0 KiB \(a pretend device\); shard the state"):
    dry_run.run(tiny_config(), str(tmp_path / "run"))
  out = capsys.readouterr().out
  assert "capacity 16.0 KiB (a pretend device): DOES NOT FIT" in out and "Whole run:" in out
  assert not os.path.exists(str(tmp_path / "run"))


def test_planning_for_a_named_accelerator_from_a_cpu_host_checks_its_memory(tfds_dir, tmp_path, monkeypatch):
  # A laptop plans a run for an H100: the H100's 80 GB is the limit, not the laptop's memory.
  monkeypatch.setattr(dry_run, "device_capacity", lambda: (16 * 2**10, "a pretend device"))
  dry_run.run(tiny_config(), str(tmp_path / "run"), accelerator="h100")
  monkeypatch.setitem(dry_run.ACCELERATORS, "h100", (989.0, 1e-6, 2.69))  # A pretend 1 KB H100.
  with pytest.raises(UserError, match=r"^does not fit: the train step needs .* per device, the device has 1000 B "
                                      r"\(h100's memory\); shard the state"):
    dry_run.run(tiny_config(), str(tmp_path / "run"), accelerator="h100")


def test_accelerator_mistakes_fail_before_building():
  # config=None: it would fail in build; the flags are checked first, in no time.
  with pytest.raises(UserError, match=r"^unknown --accelerator 'h1000' \(did you mean 'h100'\?\); known: tpu-v4, "
                                      r"tpu-v5e, tpu-v5p, tpu-v6e, a100, h100, h200, b200 \(or give --peak_tflops"):
    dry_run.run(None, "unused", accelerator="h1000")
  with pytest.raises(UserError, match=r"^--peak_tflops must be positive, got -1.0$"):
    dry_run.run(None, "unused", peak_tflops=-1.0)
  if jax.devices()[0].platform == "cpu":
    with pytest.raises(UserError, match=r"^--price_per_hour needs --accelerator=NAME or --peak_tflops"):
      dry_run.run(None, "unused", price_per_hour=2.0)


def test_code_lm_flops_are_within_10_percent_of_6n_per_token(tfds_dir, corpus, tmp_path, capsys):
  """code_lm's model and sequence length; the data from the test corpus (its tokenizer is
  smaller than the model's vocabulary, which changes no shape of the model)."""
  c = tiny_lm(corpus)
  code_lm = load_experiment("code_lm").get_config()
  c.model = code_lm.model
  c.input.data.seq_len = code_lm.input.data.seq_len
  c.input.batch_size = code_lm.input.batch_size
  c.total_steps = code_lm.total_steps
  report = dry_run.run(c, str(tmp_path / "run"), accelerator="tpu-v5e")

  counts = independent_counts(code_lm.model, np.zeros((1, 256), np.int32))
  assert report["parameters"]["total"] == sum(counts.values()) == 4_196_608
  assert {name: row["count"] for name, row in report["parameters"]["modules"].items()} == counts

  flops = report["flops"]
  assert flops["tokens_per_step"] == 32 * 256
  n = 4_196_608
  assert flops["six_n"] == 6 * n * 32 * 256
  # The estimate docs/running.md names: PaLM's 6N + 12 L H Q T per token (attention's full square).
  assert flops["six_n_attention"] == (6 * n + 12 * 4 * 8 * 32 * 256) * 32 * 256
  assert flops["per_step"] / flops["six_n_attention"] == pytest.approx(1.0, abs=0.10)
  # Kaplan et al.'s form: 6N (N: the matmul weights, the tied unembedding once) + 6 L H Q T,
  # the causal half of the square; llama.flops_per_token, which MFU divides by.
  assert flops["model_count"] == (6 * (4 * (256 * 512 + 256 * 256 + 3 * 256 * 768) + 256 * 4096)
                                  + 6 * 4 * 256 * 8 * 32) * 32 * 256
  assert flops["per_step"] / flops["model_count"] == pytest.approx(1.0, abs=0.10)
  # 6N alone leaves attention out: 12.5% of 6N at this size, so the compiled step is above it.
  assert 1.0 < flops["per_step"] / flops["six_n"] < 1.2
  assert report["run"]["total_flops"] == flops["per_step"] * 400
  out = capsys.readouterr().out
  assert re.search(r"\n  layers_0\.\.3 \(4 x\) +3,147,776 +75\.0% +3,147,776 +12\.0 MiB\n", out)
  assert f"compiled / this = {flops['per_step'] / flops['six_n_attention']:.3f}" in out
  assert f"= {dry_run._flops(flops['per_step'] * 400)}, {400 * 32 * 256:,} tokens; evaluations not counted" in out
  assert not os.path.exists(str(tmp_path / "run"))


def test_the_command_line(tfds_dir, tmp_path):
  workdir = str(tmp_path / "run")
  result = subprocess.run([sys.executable, "-m", "jaxtrain.launch", "--config=experiments/digits.py",
                           f"--workdir={workdir}", "--mode=dry_run", "--accelerator=h100"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  assert "Parameters: 151,402 (151,402 trainable, 0 frozen)" in result.stdout
  line = next(line for line in result.stdout.splitlines() if line.startswith("On h100 "))
  assert line.startswith("On h100 (989 TFLOP/s per chip, $2.69 per chip-hour): ") and "of chip time: $" in line
  assert not os.path.exists(workdir)

  bad = subprocess.run([sys.executable, "-m", "jaxtrain.launch", "--config=experiments/digits.py",
                        f"--workdir={workdir}", "--mode=dry_run", "--accelerator=tpu"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert bad.returncode == 2 and bad.stdout == ""
  assert bad.stderr.strip().splitlines()[-1].startswith("error: unknown --accelerator 'tpu'")


@pytest.mark.slow
def test_on_8_devices_memory_is_per_device_and_flops_for_all(tfds_dir, tmp_path):
  """FSDP over 8 fake CPU devices: each holds 1/8 of the parameters; the step's FLOPs are
  one device's program times 8, near the one-device step's (replicated work counts 8 times)."""
  script = (
      "import json, sys; sys.path.insert(0, 'tests')\n"
      "from test_train import tiny_config\n"
      "from jaxtrain.modes import dry_run\n"
      "c = tiny_config(); c.model.hidden = (256,); c.input.batch_size = 64\n"
      "c.parallel.mesh = dict(data=1, fsdp=-1, tensor=1); c.parallel.fsdp_min_size = 1024\n"
      f"r = dry_run.run(c, {str(tmp_path / 'run')!r})\n"
      "print(json.dumps(dict(devices=r['devices'], flops=r['flops'], memory=r['memory'], params=r['parameters'])))\n")
  reports = []
  for devices in (1, 8):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    reports.append(json.loads(result.stdout.strip().splitlines()[-1]))
  one, eight = reports
  assert eight["devices"] == 8 and eight["memory"]["capacity_of"] == "the host's memory / 8 CPU devices"
  split, whole = 4 * (64 * 256 + 256 * 10), 4 * (256 + 10)  # The kernels split over fsdp, the biases whole.
  assert one["memory"]["params"] == split + whole and eight["memory"]["params"] == split // 8 + whole
  assert eight["flops"]["per_step"] == 8 * eight["flops"]["per_device"]
  assert eight["flops"]["per_step"] == pytest.approx(one["flops"]["per_step"], rel=0.2)
  assert not os.path.exists(str(tmp_path / "run"))


def test_scanned_layers_are_costed_from_the_estimate(tfds_dir, corpus, tmp_path, capsys):
  # XLA counts a loop's body once: the scanned model's compiled step shows one layer of two.
  reports = {}
  for scan in (False, True):
    c = tiny_lm(corpus)
    c.model.scan_layers = scan
    c.model.num_layers = 2
    reports[scan] = dry_run.run(c, str(tmp_path / "run"))
  plain, scanned = reports[False]["flops"], reports[True]["flops"]
  assert not plain["scanned"] and scanned["scanned"]
  assert scanned["six_n_attention"] == plain["six_n_attention"]
  assert scanned["per_step"] < 0.8 * plain["per_step"]
  steps = reports[True]["total_steps"]
  assert reports[False]["run"]["total_flops"] == plain["per_step"] * steps
  assert reports[True]["run"]["total_flops"] == scanned["six_n_attention"] * steps
  out = capsys.readouterr().out
  assert out.count("model.scan_layers: XLA counts the scanned layers' loop body once") == 1
  assert "(6N + attention estimate) = " in out and "(compiled step) = " in out
