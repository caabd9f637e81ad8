"""The few- and zero-shot evaluators in two real processes (127.0.0.1, gloo) give what one
process with two devices gives: the probe's features come back from both processes in the
split's order, and each process feeds its half of every scoring batch."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from test_lm_eval import GEN, MC, read_jsonl, write_jsonl
from test_multihost import free_port

pytestmark = pytest.mark.slow

LM_EXPERIMENT = """
import importlib.util
spec = importlib.util.spec_from_file_location("tiny_lm", {tiny_lm!r})
tiny_lm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tiny_lm)

def get_config(arg=None):
  c = tiny_lm.get_config({corpus!r})
  c.total_steps = 20
  c.evals.mc = dict(type="multiple_choice", task={mc!r}, num_fewshot=2, every_steps=10, batch_tokens=128)
  c.evals.gen = dict(type="generation", task={gen!r}, num_fewshot=1, max_gen_toks=6, until=["\\n"], every_steps=20)
  return c
"""


def run(workdir, config, *more, processes=1):
  """One process with two devices, or two processes with one each."""
  port = free_port()
  started = []
  for i in range(processes):
    cluster = [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"] \
        if processes == 2 else []
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={3 - processes}")
    started.append(subprocess.Popen([sys.executable, "-m", "jaxtrain.launch", f"--config={config}",
                                     f"--workdir={workdir}", *more, *cluster], cwd=ROOT, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  for process in started:
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
  return read_jsonl(os.path.join(workdir, "metrics.jsonl"))


def eval_rows(rows, prefixes):
  return [{k: v for k, v in r.items() if k.startswith(prefixes)} for r in rows if any(k.startswith(prefixes) for k in r)]


def assert_same(got, expected):
  assert [sorted(r) for r in got] == [sorted(r) for r in expected] and got
  for a, b in zip(got, expected):
    for key in a:
      np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_two_processes_score_lm_tasks_as_one_process_with_two_devices(tfds_dir, corpus, tmp_path):
  config = tmp_path / "lm_tasks.py"
  config.write_text(LM_EXPERIMENT.format(tiny_lm=os.path.join(ROOT, "tests", "tiny_lm.py"), corpus=corpus,
                                         mc=write_jsonl(tmp_path / "mc.jsonl", MC),
                                         gen=write_jsonl(tmp_path / "gen.jsonl", GEN)))
  one = run(str(tmp_path / "one"), config)
  two = run(str(tmp_path / "two"), config, processes=2)
  assert_same(eval_rows(two, ("mc/", "gen/")), eval_rows(one, ("mc/", "gen/")))
  samples = [read_jsonl(tmp_path / name / "samples.jsonl") for name in ("one", "two")]
  assert samples[0] == samples[1] and len(samples[0]) == len(GEN)


def test_two_processes_probe_few_shot_as_one_process_with_two_devices(tfds_dir, tmp_path):
  config = os.path.join(ROOT, "experiments", "digits_transfer.py")
  short = ["--config.total_epochs=4", "--config.checkpoint.every_epochs=4"]
  one = run(str(tmp_path / "one"), config, *short)
  two = run(str(tmp_path / "two"), config, *short, processes=2)
  prefixes = ("fewshot/", "fewshot_conv/", "fewshot_pixels/")
  assert_same(eval_rows(two, prefixes), eval_rows(one, prefixes))
  assert json.dumps(eval_rows(one, prefixes)).count("shot") > 8
