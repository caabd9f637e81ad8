"""A trained run in use: the samples evaluator during training, `jaxtrain.lm.load` of the
work directory, `python -m jaxtrain.generate`, export to Hugging Face, and the one-line
errors of the command."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import hf_dirs
from conftest import ROOT, tiny_lm
from jaxtrain.config import duration
from jaxtrain.data import tokenizers
from jaxtrain.errors import UserError
from jaxtrain.lm import language_model as lm_lib
from jaxtrain.rundir import metrics as metrics_lib
from jaxtrain import train
from jaxtrain.training import build as build_lib

PROMPTS = ("def ", "class Parser:\n    def ")


def with_samples(config, prompts=PROMPTS):
  config.evals.samples = dict(type="samples", prompts=prompts, max_new_tokens=12, **duration("every", steps=10))
  return config


@pytest.fixture(scope="module")
def run_dir(tfds_dir, corpus, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("lm_run"))
  config = with_samples(tiny_lm(corpus))
  config.total_steps = 30
  train.run(config, workdir)
  return workdir


def generate(*args):
  return subprocess.run([sys.executable, "-m", "jaxtrain.generate", *args], capture_output=True, text=True,
                        timeout=300, cwd=ROOT)


def read_jsonl(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_the_samples_evaluator_writes_text_beside_the_metrics(run_dir):
  samples = read_jsonl(os.path.join(run_dir, "samples.jsonl"))
  assert [(r["step"], r["evaluator"], r["prompt"]) for r in samples] == [
      (step, "samples", prompt) for step in (10, 20, 30) for prompt in PROMPTS]
  assert all(isinstance(r["completion"], str) for r in samples)
  rows = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
  assert all(isinstance(v, (int, float)) for row in rows for v in row.values())  # metrics.jsonl: numbers only.
  means = [r["samples/mean_new_chars"] for r in rows if "samples/mean_new_chars" in r]
  last = [r["completion"] for r in samples if r["step"] == 30]
  assert len(means) == 3 and means[-1] == pytest.approx(sum(map(len, last)) / len(last))
  events = b"".join(open(os.path.join(run_dir, "tensorboard", name), "rb").read()
                    for name in os.listdir(os.path.join(run_dir, "tensorboard")))
  assert b"samples/samples" in events and last[0].encode() in events


def test_a_loaded_run_generates_what_the_evaluator_wrote(run_dir):
  lm = lm_lib.load(run_dir)
  assert lm.context_length == 32 and lm.tokenizer.vocab_size == 384
  assert os.path.exists(os.path.join(run_dir, "tokenizer.json"))  # Training kept a copy.
  last = [r["completion"] for r in read_jsonl(os.path.join(run_dir, "samples.jsonl")) if r["step"] == 30]
  assert lm.generate(list(PROMPTS), max_new_tokens=12) == last
  assert lm.generate(PROMPTS[0], max_new_tokens=12) == last[0]  # A str in, a str out.
  earlier = lm_lib.load(run_dir, step=10)
  first = [r["completion"] for r in read_jsonl(os.path.join(run_dir, "samples.jsonl")) if r["step"] == 10]
  assert earlier.generate(list(PROMPTS), max_new_tokens=12) == first


def test_the_command_prints_completions_after_their_prompts(run_dir, tmp_path):
  out = str(tmp_path / "completions.jsonl")
  result = generate(f"--model={run_dir}", "--prompt=def ", "--prompt=class Parser:\\n    def ", "--max_new_tokens=12",
                    f"--output={out}")
  assert result.returncode == 0, result.stderr[-2000:]
  last = [r["completion"] for r in read_jsonl(os.path.join(run_dir, "samples.jsonl")) if r["step"] == 30]
  assert result.stdout == f"--- 1 ---\ndef {last[0]}\n--- 2 ---\nclass Parser:\n    def {last[1]}\n"
  assert read_jsonl(out) == [{"prompt": p, "completion": c} for p, c in zip(PROMPTS, last)]
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
  from_file = generate(f"--model={run_dir}", f"--prompts_file={prompts}", "--max_new_tokens=12")
  assert from_file.stdout == result.stdout
  sampled = generate(f"--model={run_dir}", "--prompt=def ", "--temperature=0.9", "--top_p=0.9", "--seed=3")
  assert sampled.returncode == 0 and sampled.stdout.startswith("--- 1 ---\ndef ")


def test_an_exported_run_loads_back_with_the_same_logits(run_dir, tmp_path):
  lm = lm_lib.load(run_dir)
  out = str(tmp_path / "hf")
  lm.export_hf(out)
  back = lm_lib.load(out)
  tokens = np.asarray([lm.tokenizer.encode("def parse(text):\n    return text")[:20]])
  np.testing.assert_array_equal(back.logits(tokens), lm.logits(tokens))
  assert back.tokenizer.fingerprint == lm.tokenizer.fingerprint
  assert (back.tokenizer.bos_id, back.tokenizer.eos_id) == (lm.tokenizer.bos_id, lm.tokenizer.eos_id)


def test_a_run_without_its_tokenizer_copy_finds_it_from_its_config(run_dir, tmp_path):
  """Runs from before training kept a copy: the config's tokenizer, from the data cache."""
  kept = os.path.join(run_dir, "tokenizer.json")
  os.rename(kept, kept + ".away")
  try:
    assert lm_lib.load(run_dir).tokenizer.fingerprint == tokenizers.load(kept + ".away").fingerprint
  finally:
    os.rename(kept + ".away", kept)


def test_a_resumed_run_drops_the_samples_past_its_checkpoint(tmp_path):
  writer = metrics_lib.Writer(str(tmp_path))
  for step in (10, 20):
    writer.write_texts(step, "samples", [{"prompt": "a", "completion": str(step)}])
  writer.close()
  metrics_lib.Writer(str(tmp_path), start_step=10).close()
  assert read_jsonl(str(tmp_path / "samples.jsonl")) == [
      {"step": 10, "evaluator": "samples", "prompt": "a", "completion": "10"}]


# ---- Mistakes: one line each, exit status 2, no traceback ------------------------------------------


def one_line_error(result):
  assert result.returncode == 2, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr
  return lines[0]


def test_the_command_names_each_mistake_in_one_line(run_dir, tmp_path):
  assert "does not exist or is not a directory" in one_line_error(generate("--model=/nonexistent", "--prompt=x"))
  (tmp_path / "gpt2").mkdir()
  (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
  known = "LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, MistralForCausalLM, Gemma3ForCausalLM"
  assert f"not an architecture jaxtrain reads ({known})" in one_line_error(generate(f"--model={tmp_path / 'gpt2'}",
                                                                                     "--prompt=x"))
  long_prompt = "def f(x):\n    return x\n" * 20
  assert "leaves no room in the model's context of 32 tokens" in one_line_error(
      generate(f"--model={run_dir}", f"--prompt={long_prompt}"))
  mismatched = hf_dirs.make(str(tmp_path / "hf"), "gqa_tied")
  shutil.copy(os.path.join(run_dir, "tokenizer.json"), mismatched)  # 384 ids, more than the model's 320.
  assert "they do not belong together" in one_line_error(generate(f"--model={mismatched}", "--prompt=x"))
  assert "give --prompt" in one_line_error(generate(f"--model={run_dir}"))
  assert "no checkpoint at step 7" in one_line_error(generate(f"--model={run_dir}", "--step=7", "--prompt=x"))


def test_the_samples_evaluator_compiles_at_start_up_and_not_again(tfds_dir, corpus):
  config = with_samples(tiny_lm(corpus))
  config.evals.samples.max_new_tokens = 40  # More than the context leaves: capped at start-up as in a run.
  exp = build_lib.build(config)
  samples = next(s.evaluator for s in exp.evaluators if s.name == "samples")
  assert samples.sampler.traces == 2  # Prefill and decode, before any step.
  state = exp.strategy.init(exp.create, exp.abstract_state)
  result = samples.run({"params": state.params})
  assert samples.sampler.traces == 2 and result["mean_new_chars"] > 0


def test_a_samples_evaluator_with_bad_settings_fails_at_start_up(tfds_dir, corpus):
  with pytest.raises(UserError, match=r"evals.samples.prompts' must be a non-empty list of strings"):
    build_lib.build(_bad_prompts(corpus, "def "))
  with pytest.raises(UserError, match=r"evals.samples.prompts 0 is \d+ tokens, which leaves no room"):
    build_lib.build(_bad_prompts(corpus, ["x = 1\n" * 40]))


def _bad_prompts(corpus, prompts):
  return with_samples(tiny_lm(corpus), prompts)
