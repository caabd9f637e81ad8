"""jaxtrain's k-shot scoring equals lm-evaluation-harness 0.4.13 running the same model
(`--model hf`) on the same tasks: tests/data/lm_eval/reference.json holds what the real
harness built and scored (contexts, token ids, log-likelihoods, predictions, metrics) for
the Hugging Face directory tests/hf_dirs.py makes; scripts/check_lm_eval.py (with
lm-eval, transformers and PyTorch) writes it."""

import json
import os

import numpy as np
import pytest

import hf_dirs
from conftest import ROOT
from jaxtrain.evals import harness as harness_lib
from jaxtrain.evals import lm_tasks
from jaxtrain.lm import language_model as lm_lib

DATA = os.path.join(ROOT, "tests", "data", "lm_eval")
with open(os.path.join(DATA, "reference.json"), encoding="utf-8") as f:
  REFERENCE = json.load(f)
RUNS = {(r["task"], r["num_fewshot"], r["add_bos_token"]): r for r in REFERENCE["runs"]}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  return lm_lib.load(hf_dirs.make(str(tmp_path_factory.mktemp("hf")), REFERENCE["model"]["hf_dirs"]))


def task_of(name):
  docs = os.path.join(DATA, "mc.jsonl" if name.startswith("mc") else "gen.jsonl")
  fewshot = {"mc": "mc_fewshot.jsonl", "mc_self": None, "gen": "gen_fewshot.jsonl"}[name]
  gen = REFERENCE["gen"]
  return lm_tasks.load(docs, fewshot and os.path.join(DATA, fewshot), until=tuple(gen["until"]),
                       max_gen_toks=gen["max_gen_toks"])


def run(model, key):
  name, k, add_bos = key
  harness = harness_lib.Harness(model.module, model.strategy, model.variables, model.tokenizer, model.context_length,
                                eos_ids=model.eos_ids, add_bos=add_bos)
  prepared = harness.prepare(task_of(name), k, REFERENCE["fewshot_seed"])
  summary, records = harness.run(prepared, model.variables)
  return prepared, summary, records


def test_the_model_window_is_the_harness_max_length(model):
  assert model.context_length == REFERENCE["model"]["max_length"]
  assert not model.tokenizer.adds_bos  # So the harness's default is no BOS, as ours.


@pytest.mark.parametrize("key", [k for k in RUNS if k[0] != "gen"], ids=lambda k: f"{k[0]}-{k[1]}shot-bos{k[2]}")
def test_multiple_choice_equals_the_harness(model, key):
  reference = RUNS[key]
  prepared, summary, records = run(model, key)
  assert prepared.contexts == [d["context"] for d in reference["docs"]]
  pairs = iter(prepared.pairs)
  for doc, record in zip(reference["docs"], records):
    for continuation_ids in doc["continuation_ids"]:
      assert next(pairs) == (doc["context_ids"], continuation_ids), doc["doc_id"]
    np.testing.assert_allclose(record["loglikelihoods"], doc["loglikelihoods"], rtol=1e-5, atol=1e-4)
    assert (record["acc"], record["acc_norm"]) == (doc["acc"], doc["acc_norm"]), doc["doc_id"]
  assert any(d["truncated"] for d in reference["docs"])  # Cut from the left, as theirs.
  for metric, value in reference["metrics"].items():
    assert summary[metric] == pytest.approx(value, abs=1e-6), metric


@pytest.mark.parametrize("key", [k for k in RUNS if k[0] == "gen"], ids=lambda k: f"{k[0]}-{k[1]}shot")
def test_generation_equals_the_harness(model, key):
  reference = RUNS[key]
  prepared, summary, records = run(model, key)
  assert prepared.contexts == [d["context"] for d in reference["docs"]]
  assert prepared.prompts == [d["context_ids"] for d in reference["docs"]]
  assert [r["completion"] for r in records] == [d["prediction"] for d in reference["docs"]]
  assert [r["exact_match"] for r in records] == [d["exact_match"] for d in reference["docs"]]
  for metric, value in reference["metrics"].items():
    assert summary[metric] == pytest.approx(value, abs=1e-6), metric
