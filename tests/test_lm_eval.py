"""k-shot scoring of language models (jaxtrain.lm_eval, the multiple_choice and generation
evaluators): the sums against a direct computation, the contexts, task specs, the command's
outputs and one-line errors, the evaluators during training, 8 devices = 1, and the
next_line task built from the standard library. Equality with lm-evaluation-harness itself
is tests/evals/test_lm_eval_reference.py."""

import json
import os
import random
import subprocess
import sys
import sysconfig

import numpy as np
import pytest

import hf_dirs
from conftest import ROOT, tiny_lm
from jaxtrain.config import duration
from jaxtrain.errors import UserError
from jaxtrain.evals import harness as harness_lib
from jaxtrain.evals import lm_tasks
from jaxtrain.evals.loglikelihood import Scorer, encode_pairs
from jaxtrain.lm import language_model as lm_lib
from jaxtrain import train
from jaxtrain.training import build as build_lib

MC = [{"query": "def add(a, b):", "choices": ["return a + b", "return a - b", "pass"], "gold": 0},
      {"query": "class Point:", "choices": ["x: int = 0", "def"], "gold": 0},
      {"query": "", "choices": ["def", "class"], "gold": 1},
      {"query": "x = ", "choices": ["1", "22", "333"], "gold": 2},
      {"query": "import os\nimport sys", "choices": ["import re", "return x"], "gold": 0},
      {"query": "for i in range(10):", "choices": ["    print(i)", "class"], "gold": 0}]
GEN = [{"query": "def add(a, b):", "answer": "return a + b"}, {"query": "class", "answer": "Point"},
       {"query": "x =", "answer": "1"}]


def write_jsonl(path, docs):
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(d) + "\n" for d in docs)
  return str(path)


def read_jsonl(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def lm_eval_command(*args, env=None):
  return subprocess.run([sys.executable, "-m", "jaxtrain.lm_eval", *args], capture_output=True, text=True,
                        timeout=300, cwd=ROOT, env=env)


def one_line_error(result):
  assert result.returncode == 2, result.stderr[-2000:]
  lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1, result.stderr[-2000:]
  return lines[0]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  return lm_lib.load(hf_dirs.make(str(tmp_path_factory.mktemp("hf")), "gqa_tied"))


def test_the_sums_are_the_log_probabilities_of_the_continuations(model):
  long_context = "def add(a, b):\n    return a + b\n" * 30  # More than the window of 128: cut from the left.
  requests = [("def add(a, b):", " return a + b"), ("class", " Point:\n    x: int"), (long_context, " pass"),
              ("x = 1  ", "y"), ("", "def f(x):")]
  pairs = encode_pairs(model.tokenizer, requests)
  assert pairs[4][0] == [model.tokenizer.bos_id]  # An empty context: after BOS, as the harness.
  assert pairs[3][0] == model.tokenizer.encode("x = 1")  # Its trailing spaces start the continuation.
  expected = []
  for context, continuation in pairs:
    whole = (context + continuation)[-(model.context_length + 1):]
    logits = model.logits([whole[:-1]])[0].astype(np.float64)
    logprobs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - \
        logits.max(-1, keepdims=True)
    targets = whole[1:]
    n = len(continuation)
    expected.append(sum(logprobs[i, targets[i]] for i in range(len(targets) - n, len(targets))))
  for batch_tokens in (8192, 64):  # One batch per bucket, or a row or two per batch: the same sums.
    scorer = Scorer(model.module, model.strategy, model.variables, model.context_length, batch_tokens)
    sums, greedy = scorer.score(model.variables, pairs)
    np.testing.assert_allclose(sums, expected, rtol=1e-5, atol=1e-4)
    assert greedy.dtype == bool and len(greedy) == len(pairs)


def test_contexts_hold_k_examples_drawn_with_the_seed_never_the_document_itself(tmp_path):
  task = lm_tasks.load(write_jsonl(tmp_path / "mc.jsonl", MC))
  contexts = task.contexts(2)
  rng = random.Random(1234)
  for doc, context in zip(task.docs, contexts):
    shots = [d for d in rng.sample(task.docs, 3) if d != doc][:2]
    assert context == "".join(f"{d['query']} {d['choices'][d['gold']]}\n\n" for d in shots) + doc["query"]
    assert doc not in shots
  assert task.contexts(0) == [d["query"] for d in MC]
  assert task.contexts(2, seed=1) != contexts and task.contexts(2) == contexts
  # From a separate file, a document may be its own example (the harness does the same).
  separate = lm_tasks.load(tmp_path / "mc.jsonl", write_jsonl(tmp_path / "few.jsonl", MC[:2]))
  examples = ("def add(a, b): return a + b\n\n", "class Point: x: int = 0\n\n")
  assert all(c.startswith(examples) for c in separate.contexts(1))
  with pytest.raises(UserError, match="6-shot needs 6 examples but the task's other documents hold 5"):
    task.contexts(6)


def test_a_spec_with_a_prompt_template_classifies_zero_shot_like_the_same_task_written_out(model, tmp_path):
  reviews = [{"text": "return a + b", "label": 1}, {"text": "pass", "label": 0}, {"text": "x = 1", "label": "positive"}]
  write_jsonl(tmp_path / "reviews.jsonl", reviews)
  spec = {"docs": "reviews.jsonl", "query": "Code: {text}\nVerdict:", "choices": ["negative", "positive"],
          "gold": "label"}
  (tmp_path / "reviews.json").write_text(json.dumps(spec))
  written_out = [{"query": f"Code: {r['text']}\nVerdict:", "choices": ["negative", "positive"],
                  "gold": 1 if r["label"] in (1, "positive") else 0} for r in reviews]
  results = {}
  plain = write_jsonl(tmp_path / "plain.jsonl", written_out)
  for name, path in (("spec", str(tmp_path / "reviews.json")), ("plain", plain)):
    results[name], _, _ = harness_lib.evaluate(model, [lm_tasks.load(path)], 0)
  assert results["spec"]["reviews"] == results["plain"]["plain"]
  assert results["spec"]["reviews"]["n"] == 3


def test_task_mistakes_name_the_file_and_the_line(tmp_path):
  cases = [("not json", r"bad.jsonl, line 2: not valid JSON"),
           (json.dumps({"query": "q", "choices": ["a", "b"], "gold": 2}),
            r"bad.jsonl, line 2: 'gold' 2 is out of range for 2 choices \(0 to 1\)"),
           (json.dumps({"query": "q", "choices": [], "gold": 0}), r"bad.jsonl, line 2: the choice list is empty"),
           (json.dumps({"query": "q", "answer": "a"}), r"bad.jsonl, line 2: a generation document in a file of "
                                                       r"multiple_choice documents"),
           (json.dumps({"question": "q"}), r"bad.jsonl, line 2: a document needs 'query'"),
           (json.dumps({"query": 3, "choices": ["a"], "gold": 0}), r"bad.jsonl, line 2: 'query' must be a string")]
  for line, message in cases:
    (tmp_path / "bad.jsonl").write_text(json.dumps(MC[0]) + "\n" + line + "\n")
    with pytest.raises(UserError, match=message):
      lm_tasks.load(tmp_path / "bad.jsonl")
  with pytest.raises(UserError, match=r"task file .*missing.jsonl does not exist"):
    lm_tasks.load(tmp_path / "missing.jsonl")


@pytest.mark.parametrize("key, template, field", [
    ("query", "Review: {text.upper}\nSentiment:", "text.upper"),
    ("query", "{text.__class__.__init__.__globals__}", "text.__class__.__init__.__globals__"),
    ("query", "Review: {words[0]}", "words[0]"),
    ("query", "Review: {text!r}", "text!r"),
    ("query", "Review: {text:>{width.real}}", "width.real"),
    ("query", "Review: {}", ""),
    ("query", "Review: {0}", "0"),
    ("answer", "{label.bit_length}", "label.bit_length"),
])
def test_a_template_that_reaches_past_plain_fields_is_refused_at_load(key, template, field, tmp_path):
  """str.format would render a bound method, or reach a field's attributes and items: a
  template names fields of the document, each maybe with a format spec, nothing more."""
  write_jsonl(tmp_path / "reviews.jsonl", [{"text": "ok", "words": ["ok"], "label": 1, "width": 5}])
  spec = {"docs": "reviews.jsonl", "query": "{text}", "choices": ["negative", "positive"], "gold": "label"}
  (tmp_path / "reviews.json").write_text(json.dumps(dict(spec, **{key: template})))
  with pytest.raises(UserError) as e:
    lm_tasks.load(tmp_path / "reviews.json")
  assert str(e.value) == (f"task spec {tmp_path / 'reviews.json'}: the {key} template {template!r} has field "
                          f"{{{field}}}: use plain fields of the document, e.g. {{text}} or {{text:>5}} (no "
                          f"attributes, indexing, conversions or positions)")


def test_templates_with_format_specs_render_and_a_spec_a_value_refuses_is_one_line(tmp_path):
  write_jsonl(tmp_path / "reviews.jsonl", [{"text": "ok", "label": 1, "width": 5, "words": ["a"]}])
  spec = {"docs": "reviews.jsonl", "query": "[{text:>{width}}] {label:03d}", "answer": "{text:.1}"}
  (tmp_path / "reviews.json").write_text(json.dumps(spec))
  task = lm_tasks.load(tmp_path / "reviews.json")
  assert task.docs == [{"query": "[   ok] 001", "answer": "o"}]
  (tmp_path / "reviews.json").write_text(json.dumps(dict(spec, query="{words:>5}")))
  with pytest.raises(UserError, match=r"reviews.jsonl, line 1: cannot render the query template '\{words:>5\}': "
                                      r"unsupported format string passed to list.__format__$"):
    lm_tasks.load(tmp_path / "reviews.json")


def test_the_command_names_each_mistake_in_one_line_and_writes_nothing(model, tmp_path):
  out = tmp_path / "out"
  good = write_jsonl(tmp_path / "good.jsonl", MC)
  bad_lines = {"gold": (json.dumps({"query": "q", "choices": ["a"], "gold": 1}), "line 2: 'gold' 1 is out of range"),
               "empty": (json.dumps({"query": "q", "choices": [], "gold": 0}), "line 2: the choice list is empty"),
               "broken": ('{"query": "q", "choices": ["a"]', "line 2: not valid JSON")}
  for name, (line, message) in bad_lines.items():
    (tmp_path / f"{name}.jsonl").write_text(json.dumps(MC[0]) + "\n" + line + "\n")
    tasks = f"{good},{tmp_path / name}.jsonl"  # The good task is not scored either.
    error = one_line_error(lm_eval_command(f"--model={model.source}", f"--tasks={tasks}", f"--output_path={out}"))
    assert f"{name}.jsonl, {message}" in error
  error = one_line_error(lm_eval_command(f"--model={model.source}", f"--tasks={tmp_path / 'missing.jsonl'}",
                                         f"--output_path={out}"))
  assert "missing.jsonl does not exist" in error
  assert "8-shot needs 8 examples" in one_line_error(lm_eval_command(
      f"--model={model.source}", f"--tasks={good}", "--num_fewshot=8", f"--output_path={out}"))
  assert not out.exists()


def test_the_command_prints_the_table_and_writes_results_and_samples(model, tmp_path):
  mc, gen = write_jsonl(tmp_path / "mc.jsonl", MC), write_jsonl(tmp_path / "gen.jsonl", GEN)
  out = tmp_path / "out"
  result = lm_eval_command(f"--model={model.source}", f"--tasks={mc},{gen}", "--num_fewshot=1", "--limit=5",
                           f"--output_path={out}", "--log_samples")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "| mc   | 1 | acc " in result.stdout and "| gen  | 1 | exact_match |" in result.stdout
  results = json.loads((out / "results.json").read_text())["results"]
  samples = read_jsonl(out / "samples_mc.jsonl")
  assert [s["doc_id"] for s in samples] == [0, 1, 2, 3, 4] and results["mc"]["n"] == 5
  assert [len(s["loglikelihoods"]) for s in samples] == [len(d["choices"]) for d in MC[:5]]
  assert results["mc"]["acc"] == pytest.approx(np.mean([s["acc"] for s in samples]))
  assert results["mc"]["acc_norm_stderr"] == pytest.approx(np.std([s["acc_norm"] for s in samples], ddof=1) / 5 ** 0.5)
  for s, doc in zip(samples, MC):
    lls = np.asarray(s["loglikelihoods"])
    assert s["acc"] == int(np.argmax(lls) == doc["gold"])
    assert s["acc_norm"] == int(np.argmax(lls / [len(c) for c in doc["choices"]]) == doc["gold"])
  assert set(results["gen"]) == {"exact_match", "exact_match_stderr", "n"} and results["gen"]["n"] == 3
  assert all(set(s) == {"doc_id", "context", "completion", "answer", "exact_match"}
             for s in read_jsonl(out / "samples_gen.jsonl"))


def test_the_evaluators_during_training_give_what_the_command_gives_on_the_checkpoint(tfds_dir, corpus, tmp_path):
  mc = write_jsonl(tmp_path / "mc.jsonl", MC)
  gen = write_jsonl(tmp_path / "gen.jsonl", GEN)
  config = tiny_lm(corpus)
  config.total_steps = 20
  config.evals.mc = dict(type="multiple_choice", task=mc, num_fewshot=1, **duration("every", steps=10))
  config.evals.gen = dict(type="generation", task=gen, num_fewshot=1, max_gen_toks=6, until=["\n"],
                          **duration("every", steps=10))
  workdir = str(tmp_path / "run")
  final = train.run(config, workdir)
  rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in rows if "mc/acc" in r] == [10, 20]
  assert {"mc/acc_norm", "mc/acc_stderr", "mc/n", "gen/exact_match"} <= set(final)
  assert [r["evaluator"] for r in read_jsonl(os.path.join(workdir, "samples.jsonl"))] == ["gen"] * 6
  out = tmp_path / "out"
  result = lm_eval_command(f"--model={workdir}", f"--tasks={mc}", "--num_fewshot=1", f"--output_path={out}")
  assert result.returncode == 0, result.stderr[-3000:]
  command = json.loads((out / "results.json").read_text())["results"]["mc"]
  assert command["acc"] == final["mc/acc"] and command["acc_norm"] == final["mc/acc_norm"]


def test_a_generation_evaluator_needs_a_generation_task(tfds_dir, corpus, tmp_path):
  config = tiny_lm(corpus)
  config.evals.gen = dict(type="generation", task=write_jsonl(tmp_path / "mc.jsonl", MC))
  with pytest.raises(UserError, match=r"mc holds multiple_choice documents; use type='multiple_choice'"):
    build_lib.build(config)


@pytest.mark.slow
def test_8_devices_score_as_one(model, tmp_path):
  mc = write_jsonl(tmp_path / "mc.jsonl", MC)
  outputs = {}
  for devices in (1, 8):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    out = tmp_path / f"out{devices}"
    result = lm_eval_command(f"--model={model.source}", f"--tasks={mc}", "--num_fewshot=2", f"--output_path={out}",
                             "--log_samples", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs[devices] = read_jsonl(out / "samples_mc.jsonl")
  for one, eight in zip(outputs[1], outputs[8]):
    np.testing.assert_allclose(one["loglikelihoods"], eight["loglikelihoods"], rtol=1e-5, atol=1e-5)
    assert (one["acc"], one["acc_norm"]) == (eight["acc"], eight["acc_norm"])


def test_the_next_line_task_asks_for_the_real_next_line_of_held_out_stdlib_files(tmp_path):
  result = subprocess.run([sys.executable, "scripts/make_next_line_task.py", f"--out={tmp_path}", "--num_docs=30",
                           "--num_fewshot_docs=5"], capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert result.returncode == 0, result.stderr
  task = lm_tasks.load(tmp_path / "next_line.json")
  assert (len(task.docs), len(task.fewshot_docs), task.target_delimiter) == (30, 5, "\n")
  stdlib = sysconfig.get_paths()["stdlib"]
  for raw, doc in zip(read_jsonl(tmp_path / "next_line.jsonl"), task.docs):
    path, line = raw["source"].rsplit(":", 1)
    with open(os.path.join(stdlib, path), encoding="utf-8") as f:
      lines = f.read().split("\n")
    assert doc["choices"][doc["gold"]] == lines[int(line) - 1]
    assert doc["query"] == "\n".join(lines[int(line) - 5:int(line) - 1])
    assert len(set(doc["choices"])) == 4
  assert {raw["gold"] for raw in read_jsonl(tmp_path / "next_line.jsonl")} == {0, 1, 2, 3}
