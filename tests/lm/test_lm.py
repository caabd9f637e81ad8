"""Language-model training end to end on real text (standard-library modules): the metrics
and their exact counts, and the platform's guarantees for LM runs: exact resume after
SIGKILL, and 8 (fake) devices train as one, whatever the mesh."""

import json
import math
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, read_checkpoint, tiny_lm
from jaxtrain.config import Reader
from jaxtrain import data
from jaxtrain.data import tokenizers
from jaxtrain.evals import harness as harness_lib
from jaxtrain.evals import lm_tasks
from jaxtrain.lm import language_model as lm_lib
from jaxtrain.models.llama import Llama
from jaxtrain import train
from jaxtrain.training import build as build_lib
from test_tokenizers import BPE_CHAT, chat_bpe, sentencepiece, transformers_ids

TINY_LM = os.path.join(ROOT, "tests", "tiny_lm.py")


def read_rows(workdir):
  # A running job may be mid-way through a line: read complete lines only.
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.endswith("\n")]


def test_an_lm_run_reports_loss_perplexity_and_bits_per_byte_over_every_held_out_token(tfds_dir, corpus, tmp_path):
  workdir = str(tmp_path / "run")
  train.run(tiny_lm(corpus), workdir)
  rows = read_rows(workdir)
  val = [r for r in rows if "val/loss" in r][-1]
  train_rows = [r for r in rows if "train/loss" in r]
  assert train_rows[-1]["train/loss"] < train_rows[0]["train/loss"] - 1.0
  assert all(r["train/tokens_per_sec"] == pytest.approx(r["train/examples_per_sec"] * 32) for r in train_rows)
  assert {"train/perplexity", "train/bits_per_byte", "train/accuracy"} <= set(train_rows[-1])

  # The held-out split, opened as the evaluator opens it: every token counted exactly once.
  section = Reader(tiny_lm(corpus)).input.data
  source = data.open_from_config(section)
  held_out = data.open_from_config(Reader({"split": "validation"}), like=source)
  rows_ = held_out.read(np.arange(len(held_out)))
  assert val["val/num_tokens"] == int(rows_["weights"].sum())
  assert rows_["bytes"].sum() == held_out.num_bytes
  assert val["val/num_examples"] == len(held_out)
  assert val["val/perplexity"] == pytest.approx(math.exp(val["val/loss"]), rel=1e-6)
  nats = val["val/loss"] * val["val/num_tokens"]
  assert val["val/bits_per_byte"] == pytest.approx(nats / math.log(2) / held_out.num_bytes, rel=1e-6)


def test_a_model_smaller_than_the_tokenizer_is_refused(tfds_dir, corpus):
  c = tiny_lm(corpus)
  c.model.vocab_size = 300
  with pytest.raises(Exception, match=r"model.vocab_size=300 is smaller than the tokenizer's 384 ids; "
                                      r"set model.vocab_size=384"):
    build_lib.build(c)



# ---- Prompts: BOS and special tokens as transformers encodes them ---------------------------


def lm_with(directory):
  """An LM of random weights with the tokenizer in `directory`."""
  module = Llama(vocab_size=384, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64)
  variables = module.init(jax.random.key(0), jax.numpy.zeros((1, 8), jax.numpy.int32), train=False)
  return lm_lib.LM(module, variables, tokenizers.load(directory), 128, directory)


def fed(lm, prompt, **kwargs):
  """The prompt ids `lm.generate(prompt)` hands the sampler."""
  seen, generate = [], lm.sampler.generate
  lm.sampler.generate = lambda prompts, *a, **k: seen.extend(prompts) or generate(prompts, *a, **k)
  lm.generate(prompt, max_new_tokens=2, **kwargs)
  lm.sampler.generate = generate
  return seen[0]


def test_generate_puts_bos_first_only_where_the_tokenizer_does(tmp_path):
  """SmolLM2's tokenizer.json adds no BOS, Llama 3's (a TemplateProcessing) does, Llama 2's
  tokenizer.model does (transformers' LlamaTokenizer): the ids transformers' generate gets."""
  prompt = "def add(a, b):"
  smol = chat_bpe(str(tmp_path / "smol"))
  llama3 = chat_bpe(str(tmp_path / "llama3"), bos_first=True)
  llama2 = lm_with(sentencepiece(str(tmp_path / "llama2")))
  assert transformers_ids(smol, prompt)[0] != 1 and transformers_ids(llama3, prompt)[0] == 1
  assert fed(lm_with(smol), prompt) == transformers_ids(smol, prompt)
  assert fed(lm_with(llama3), prompt) == transformers_ids(llama3, prompt)
  assert fed(llama2, prompt) == [1] + llama2.tokenizer.encode(prompt)
  assert fed(lm_with(smol), prompt, add_bos=True) == [1] + transformers_ids(smol, prompt)
  assert fed(llama2, prompt, add_bos=False) == llama2.tokenizer.encode(prompt)


def test_generate_encodes_chat_tokens_in_a_prompt_as_their_ids(tmp_path):
  smol = chat_bpe(str(tmp_path / "smol"))
  lm = lm_with(smol)
  ids = fed(lm, BPE_CHAT)
  assert ids == transformers_ids(smol, BPE_CHAT)
  assert ids.count(lm.tokenizer.encode("<|im_start|>", special_tokens=True)[0]) == 3
  assert len(lm.tokenizer.encode(BPE_CHAT)) > len(ids) + 6  # Spelled out, each marker is several tokens.
  assert fed(lm, BPE_CHAT, special_tokens=False) == lm.tokenizer.encode(BPE_CHAT)  # Text you do not trust.


def test_lm_eval_contexts_and_continuations_parse_special_tokens(tmp_path):
  smol = chat_bpe(str(tmp_path / "smol"))
  lm = lm_with(smol)
  harness = harness_lib.Harness(lm.module, lm.strategy, lm.variables, lm.tokenizer, lm.context_length)
  choices = ["It is 6.<|im_end|>", "It is 5.<|im_end|>"]
  mc = harness.prepare(lm_tasks.Task("mc", lm_tasks.MULTIPLE_CHOICE, [{"query": BPE_CHAT, "choices": choices,
                                                                       "gold": 0}], target_delimiter=""), 0)
  # The context's trailing newline moves to the continuation, as the harness does.
  assert [c + t for c, t in mc.pairs] == [transformers_ids(smol, BPE_CHAT + c) for c in choices]
  assert [t[-1] for _, t in mc.pairs] == [lm.tokenizer.encode("<|im_end|>", special_tokens=True)[0]] * 2
  gen = harness.prepare(lm_tasks.Task("gen", lm_tasks.GENERATION, [{"query": BPE_CHAT, "answer": "6"}],
                                      max_gen_toks=8), 0)
  assert gen.prompts == [transformers_ids(smol, BPE_CHAT)]


# ---- Resume and devices (slow: separate processes) ------------------------------------------


def launch(workdir, corpus, *more, devices=None):
  env = dict(os.environ)
  if devices:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return subprocess.Popen([sys.executable, "-m", "jaxtrain.launch", f"--config={TINY_LM}:{corpus}",
                           f"--workdir={workdir}", *more], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env)


def finish(workdir, corpus, *more, devices=None):
  process = launch(workdir, corpus, *more, devices=devices)
  _, stderr = process.communicate(timeout=600)
  assert process.returncode == 0, stderr[-3000:]


def comparable(rows):
  return [{k: v for k, v in r.items() if not k.endswith(("_per_sec", "_seconds", "mfu"))} for r in rows]


@pytest.mark.slow
def test_an_lm_run_killed_twice_ends_as_if_never_stopped(tfds_dir, corpus, tmp_path):
  more = ["--config.total_steps=120"]
  reference = str(tmp_path / "reference")
  finish(reference, corpus, *more)
  workdir = str(tmp_path / "run")
  for stop_after in (25, 75):
    process = launch(workdir, corpus, *more)
    while not any(r["step"] >= stop_after for r in (read_rows(workdir) if os.path.exists(
        os.path.join(workdir, "metrics.jsonl")) else [])):
      assert process.poll() is None, process.communicate()[1][-3000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
  finish(workdir, corpus, *more)
  assert comparable(read_rows(workdir)) == comparable(read_rows(reference))
  for a, b in zip(jax.tree.leaves(read_checkpoint(reference, 120)), jax.tree.leaves(read_checkpoint(workdir, 120)),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


MESHES = {
    "jit_data": [],
    "jit_fsdp": ["--config.parallel.mesh.data=1", "--config.parallel.mesh.fsdp=-1", "--config.parallel.fsdp_min_size=0"],
    "jit_data_fsdp_tensor": ["--config.parallel.mesh.data=2", "--config.parallel.mesh.fsdp=2",
                             "--config.parallel.mesh.tensor=2", "--config.parallel.fsdp_min_size=0",
                             "--config.parallel.rules=" + repr(__import__("jaxtrain.models.llama", fromlist=["x"])
                                                               .sharding_rules())],
    "pmap": ["--config.parallel.strategy=pmap"],
}
# The logits at the scored tokens only (step.scored_sums): rows stay on their devices.
MESHES["jit_data_fsdp_tensor_scored"] = MESHES["jit_data_fsdp_tensor"] + ["--config.task.logits=scored"]
MESHES["pmap_scored"] = MESHES["pmap"] + ["--config.task.logits=scored"]


@pytest.mark.slow
def test_an_lm_trains_on_8_devices_as_on_one_whatever_the_mesh(tfds_dir, corpus, tmp_path):
  one = str(tmp_path / "one")
  finish(one, corpus)
  expected = comparable(read_rows(one))
  for name, more in MESHES.items():
    workdir = str(tmp_path / name)
    finish(workdir, corpus, *more, devices=8)
    got = comparable(read_rows(workdir))
    assert [sorted(r) for r in got] == [sorted(r) for r in expected], name
    for a, b in zip(got, expected):
      for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=2e-5, atol=1e-6, err_msg=f"{name} {key} step {a['step']}")


@pytest.mark.slow
def test_two_processes_train_an_lm_as_one_process_with_two_devices(tfds_dir, corpus, tmp_path):
  """The packed rows, the tokenizer and its cache are made by process 0 first and read by
  both; each process feeds its half of every global batch."""
  from test_multihost import free_port  # pylint: disable=import-outside-toplevel
  one = str(tmp_path / "one")
  finish(one, corpus, devices=2)
  two = str(tmp_path / "two")
  port = free_port()
  fresh = f"--config.input.data.data_dir={tmp_path / 'fresh_data'}"  # The tokenizer and rows made anew.
  processes = [launch(two, corpus, fresh, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                      f"--process_id={i}", devices=1) for i in range(2)]
  for process in processes:
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
  assert len(os.listdir(tmp_path / "fresh_data" / "jaxtrain_text" / "tokenizers")) == 1
  got, expected = comparable(read_rows(two)), comparable(read_rows(one))
  assert [sorted(r) for r in got] == [sorted(r) for r in expected]
  for a, b in zip(got, expected):
    for key in a:
      np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=f"{key} step {a['step']}")
