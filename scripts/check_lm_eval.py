"""Reference outputs of lm-evaluation-harness (0.4.13, `--model hf`) for jaxtrain.lm_eval.

    pip install -e '.[lm_eval]'      # lm-eval[hf] 0.4.13, transformers, torch
    python scripts/check_lm_eval.py [--write]

Builds the small Llama directory of tests/hf_dirs.py ("gqa_tied": context 128), defines
lm-eval tasks from the JSONL files in tests/data/lm_eval/ (multiple choice: query, choices,
gold; generation: query, answer; few-shot examples from the *_fewshot.jsonl file), and runs
the real harness for each (task, num_fewshot, add_bos_token) of RUNS. It records the
aggregate metrics and, per document, the context lm-eval built, the continuations, the
token ids the model was fed (captured inside HFLM, not recomputed), the log-likelihoods,
and for generation the generated ids and text. It also checks the harness against this
script's own restatement of the semantics (context assembly with the few-shot RNG, token
split, truncation, acc/acc_norm, stderr), so a change in lm-eval shows up here, and reports
the smallest score margins (a float difference below them cannot change a metric).
--write stores tests/data/lm_eval/reference.json; without it the outputs are compared with
that file (metrics exactly, log-likelihoods to 1e-4). Exits non-zero on any mismatch.
"""

import argparse
import importlib.metadata
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data", "lm_eval")
REFERENCE = os.path.join(DATA, "reference.json")
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
TMP = tempfile.mkdtemp(prefix="check_lm_eval_")
os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=os.path.join(TMP, "datasets"),
                  TOKENIZERS_PARALLELISM="false")

import hf_dirs  # pylint: disable=wrong-import-position

# (task, num_fewshot, add_bos_token). "mc_self" draws its few-shot examples from the test
# file itself, the harness's other path (n + 1 drawn, the document removed).
RUNS = [("mc", 0, False), ("mc", 1, False), ("mc", 5, False), ("mc", 1, True), ("mc_self", 2, False),
        ("gen", 0, False), ("gen", 2, False)]
SEED = 1234  # simple_evaluate's default fewshot_random_seed
MAX_GEN_TOKS = 16
UNTIL = ["\n", " +"]
MC = """task: jt_{name}
dataset_path: json
dataset_kwargs:
  data_files: {{test: {data}/mc.jsonl, train: {data}/mc_fewshot.jsonl}}
test_split: test
fewshot_split: {fewshot}
output_type: multiple_choice
doc_to_text: "{{{{query}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
target_delimiter: " "
fewshot_delimiter: "\\n\\n"
metric_list:
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
  - {{metric: acc_norm, aggregation: mean, higher_is_better: true}}
"""
GEN = """task: jt_gen
dataset_path: json
dataset_kwargs:
  data_files: {{test: {data}/gen.jsonl, train: {data}/gen_fewshot.jsonl}}
test_split: test
fewshot_split: train
output_type: generate_until
doc_to_text: "{{{{query}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: " "
fewshot_delimiter: "\\n\\n"
generation_kwargs: {{until: {until}, do_sample: false, max_gen_toks: {max_gen_toks}}}
metric_list:  # exact match after stripping whitespace from both sides
  - {{metric: exact_match, aggregation: mean, higher_is_better: true, regexes_to_ignore: ["^\\\\s+", "\\\\s+$"]}}
"""


def read_jsonl(name):
  with open(os.path.join(DATA, name), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def write_tasks():
  directory = os.path.join(TMP, "tasks")
  os.makedirs(directory)
  texts = {"mc": MC.format(name="mc", data=DATA, fewshot="train"), "mc_self": MC.format(name="mc_self", data=DATA,
           fewshot="test"), "gen": GEN.format(data=DATA, until=json.dumps(UNTIL), max_gen_toks=MAX_GEN_TOKS)}
  for name, text in texts.items():
    with open(os.path.join(directory, name + ".yaml"), "w", encoding="utf-8") as f:
      f.write(text)
  return directory


def make_lm(model_dir, add_bos):
  """HFLM as simple_evaluate makes it from a model_args string, with hooks that record what
  the model is fed: (context, continuation) -> token ids, and generation inputs/outputs."""
  import lm_eval.api.registry  # pylint: disable=import-outside-toplevel
  args = f"pretrained={model_dir},dtype=float32" + (",add_bos_token=True" if add_bos else "")
  lm = lm_eval.api.registry.get_model("hf").create_from_arg_string(args, {"batch_size": 1, "device": "cpu"})
  lm.fed, lm.generated, lm.strings = {}, {}, []
  # pylint: disable=protected-access
  scorer, generate, encode = lm._loglikelihood_tokens, lm._model_generate, lm.tok_batch_encode

  def loglikelihood_tokens(requests, *a, **k):
    for strings, context_enc, continuation_enc in requests:
      lm.fed[strings] = (list(context_enc), list(continuation_enc))
    return scorer(requests, *a, **k)

  def tok_batch_encode(strings, *a, **k):
    lm.strings = list(strings)
    return encode(strings, *a, **k)

  def model_generate(context, *a, **k):  # batch size 1: one context a call
    out = generate(context, *a, **k)
    lm.generated[lm.strings[0]] = (context[0].tolist(), out[0, context.shape[1]:].tolist())
    return out
  lm._loglikelihood_tokens, lm._model_generate, lm.tok_batch_encode = loglikelihood_tokens, model_generate, tok_batch_encode
  return lm


def expected_contexts(task, k, docs, pool):
  """The contexts as this script states the semantics: one Random(seed) for the task,
  drawing in document order; each example is query + " " + answer + "\\n\\n"."""
  rnd, out = random.Random(SEED), []
  for doc in docs:
    if k == 0:
      shots = []
    elif task == "mc_self":  # few-shot split == test split: draw k + 1, drop the document itself
      shots = [d for d in rnd.sample(pool, k + 1) if d != doc][:k]
    else:
      shots = rnd.sample(pool, k)
    answer = (lambda d: d["choices"][d["gold"]]) if task.startswith("mc") else (lambda d: d["answer"])
    out.append("".join(d["query"] + " " + answer(d) + "\n\n" for d in shots) + doc["query"])
  return out


def expected_ids(tok, context, continuation, add_bos):
  """Token split of HFLM: trailing whitespace of the context moves to the continuation; the
  whole string and the context are encoded, the split is at the context's token count; an
  empty context is replaced by the prefix token (BOS here)."""
  if context == "":
    cont = tok.encode(continuation, add_special_tokens=False)
    return ([tok.bos_token_id], cont) if cont[0] != tok.bos_token_id else (cont[:1], cont[1:])
  n = len(context) - len(context.rstrip())
  if n:
    context, continuation = context[:-n], context[-n:] + continuation
  whole, ctx = (tok.encode(s, add_special_tokens=add_bos) for s in (context + continuation, context))
  return ctx, whole[len(ctx):]


def rescore(model, context_ids, continuation_ids, max_length):
  """Sum of log-probs as HFLM scores it (input left-truncated to max_length), and the
  smallest gap between the chosen token and the best other one (for is_greedy)."""
  import torch  # pylint: disable=import-outside-toplevel
  ids = (context_ids + continuation_ids)[-(max_length + 1):][:-1]
  with torch.no_grad():
    logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)[-len(continuation_ids):]
  target = logp[torch.arange(len(continuation_ids)), torch.tensor(continuation_ids)]
  other = logp.scatter(1, torch.tensor(continuation_ids)[:, None], -math.inf).max(-1).values
  return float(target.sum()), float((target - other).abs().min()), len(ids)


def top2_gap(values):
  top = sorted(values, reverse=True)
  return top[0] - top[1]


def run(lm, task_dir, task, k, failures, margins):
  import lm_eval  # pylint: disable=import-outside-toplevel
  from lm_eval.tasks import TaskManager  # pylint: disable=import-outside-toplevel
  name = "jt_" + task
  res = lm_eval.simple_evaluate(model=lm, tasks=[name], num_fewshot=k, log_samples=True, batch_size=1,
                                task_manager=TaskManager(include_path=task_dir, include_defaults=False),
                                fewshot_random_seed=SEED)
  metrics, samples = res["results"][name], sorted(res["samples"][name], key=lambda s: s["doc_id"])
  tok, add_bos = lm.tokenizer, bool(lm.add_bos_token)
  docs = read_jsonl("gen.jsonl" if task == "gen" else "mc.jsonl")
  pool = read_jsonl({"mc": "mc_fewshot.jsonl", "mc_self": "mc.jsonl", "gen": "gen_fewshot.jsonl"}[task])
  contexts = expected_contexts(task, k, docs, pool)
  out = {"task": task, "num_fewshot": k, "add_bos_token": add_bos, "metrics": {"n": len(samples)}, "docs": []}
  names = ["exact_match"] if task == "gen" else ["acc", "acc_norm"]
  for m in names:
    out["metrics"][m] = float(metrics[f"{m},none"])
    out["metrics"][m + "_stderr"] = metrics[f"{m}_stderr,none"]
    values = [float(s[m]) for s in samples]
    mean = sum(values) / len(values)
    stderr = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
    if abs(mean - out["metrics"][m]) > 1e-12 or abs(stderr - out["metrics"][m + "_stderr"]) > 1e-12:
      failures.append(f"{task} k={k}: {m} aggregate is not mean / sample-stddev/sqrt(n)")
  for s in samples:
    i = s["doc_id"]
    context = s["arguments"][0][0]
    if context != contexts[i]:
      failures.append(f"{task} k={k} doc {i}: context differs from the stated semantics")
    row = {"doc_id": i, "context": context}
    if task == "gen":
      context_ids, new_ids = lm.generated[context]
      row.update(context_ids=context_ids, generated_ids=new_ids, decoded=lm.tok_decode(new_ids),
                 prediction=s["filtered_resps"][0], exact_match=float(s["exact_match"]))
      # Generation keeps the context whole (no whitespace moved), left-truncated to leave room.
      if context_ids != tok.encode(context, add_special_tokens=add_bos)[-(lm.max_length - MAX_GEN_TOKS):]:
        failures.append(f"gen k={k} doc {i}: generation input ids differ from the stated semantics")
      pred = lm.tok_decode(new_ids)
      for stop in UNTIL:
        pred = pred.split(stop)[0]
      if pred != s["filtered_resps"][0] or float(pred.strip() == docs[i]["answer"].strip()) != float(s["exact_match"]):
        failures.append(f"gen k={k} doc {i}: stop-string cut or exact_match differs from the stated semantics")
      margins["generation"] = min(margins.get("generation", math.inf), greedy_gap(lm.model, context_ids, new_ids))
    else:
      conts = [a[1] for a in s["arguments"]]
      if conts != [" " + c for c in docs[i]["choices"]]:
        failures.append(f"{task} k={k} doc {i}: continuations are not ' ' + choice")
      fed = [lm.fed[(context, c)] for c in conts]
      lls = [float(r[0]) for r in s["filtered_resps"]]
      for c, ids, ll in zip(conts, fed, lls):
        if tuple(map(list, expected_ids(tok, context, c, add_bos))) != ids:
          failures.append(f"{task} k={k} doc {i}: token split differs from the stated semantics")
        again, gap, _ = rescore(lm.model, ids[0], ids[1], lm.max_length)
        if abs(again - ll) > 1e-4:
          failures.append(f"{task} k={k} doc {i}: rescoring the fed ids gives {again}, harness {ll}")
        margins["is_greedy"] = min(margins.get("is_greedy", math.inf), gap)
      lens = [len(c) for c in docs[i]["choices"]]
      norm = [ll / n for ll, n in zip(lls, lens)]
      gold = docs[i]["gold"]
      acc, acc_norm = float(max(range(len(lls)), key=lls.__getitem__) == gold), float(
          max(range(len(norm)), key=norm.__getitem__) == gold)
      if (acc, acc_norm) != (s["acc"], s["acc_norm"]):
        failures.append(f"{task} k={k} doc {i}: acc/acc_norm differ from argmax of sums / sums per character")
      margins["acc"] = min(margins.get("acc", math.inf), top2_gap(lls))
      margins["acc_norm"] = min(margins.get("acc_norm", math.inf), top2_gap(norm))
      row.update(continuations=conts, context_ids=fed[0][0], continuation_ids=[f[1] for f in fed],
                 truncated=len(fed[0][0]) + max(len(f[1]) for f in fed) > lm.max_length + 1,
                 loglikelihoods=[round(x, 6) for x in lls], is_greedy=[bool(r[1]) for r in s["filtered_resps"]],
                 acc=acc, acc_norm=acc_norm)
    out["docs"].append(row)
  out["metrics"] = {m: round(v, 6) if isinstance(v, float) else v for m, v in out["metrics"].items()}
  return out


def greedy_gap(model, context_ids, new_ids):
  """Smallest top-1 minus top-2 log-prob gap over the generated tokens."""
  import torch  # pylint: disable=import-outside-toplevel
  if not new_ids:
    return math.inf
  with torch.no_grad():
    logits = model(torch.tensor([context_ids + new_ids])).logits[0, len(context_ids) - 1:-1].float()
  top = torch.log_softmax(logits, -1).topk(2, -1).values
  return float((top[:, 0] - top[:, 1]).min())


def compare(got, want):
  """Differences between two references: everything exactly but log-likelihoods (1e-4)."""
  diffs = []
  for g, w in zip(got["runs"], want["runs"]):
    tag = f"{g['task']} k={g['num_fewshot']} bos={g['add_bos_token']}"
    if g["metrics"] != w["metrics"]:
      diffs.append(f"{tag}: metrics {g['metrics']} != {w['metrics']}")
    for dg, dw in zip(g["docs"], w["docs"]):
      for key in dg:
        if key == "loglikelihoods":
          if max(abs(a - b) for a, b in zip(dg[key], dw[key])) > 1e-4:
            diffs.append(f"{tag} doc {dg['doc_id']}: loglikelihoods {dg[key]} != {dw[key]}")
        elif dg[key] != dw.get(key):
          diffs.append(f"{tag} doc {dg['doc_id']}: {key} differs")
  if len(got["runs"]) != len(want["runs"]):
    diffs.append("different runs")
  return diffs


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--write", action="store_true", help="write tests/data/lm_eval/reference.json")
  args = parser.parse_args()
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(2)
  model_dir = hf_dirs.make(os.path.join(TMP, "model"), "gqa_tied")
  task_dir = write_tasks()
  lms = {False: make_lm(model_dir, False), True: make_lm(model_dir, True)}
  failures, margins, runs = [], {}, []
  for task, k, add_bos in RUNS:
    start = time.time()
    runs.append(run(lms[add_bos], task_dir, task, k, failures, margins))
    print(f"{task:8s} k={k} add_bos={add_bos!s:5s} {runs[-1]['metrics']}  ({time.time() - start:.1f} s)")
  print("smallest margins:", {m: f"{v:.3g}" for m, v in margins.items()})
  got = {"lm_eval": importlib.metadata.version("lm_eval"),
         "transformers": transformers.__version__, "torch": torch.__version__,
         "model": {"hf_dirs": "gqa_tied", "max_length": lms[False].max_length, "dtype": "float32"},
         "fewshot_seed": SEED, "gen": {"until": UNTIL, "max_gen_toks": MAX_GEN_TOKS},
         "margins": {m: round(v, 6) for m, v in margins.items()}, "runs": runs}
  if args.write:
    with open(REFERENCE, "w", encoding="utf-8") as f:
      json.dump(got, f, ensure_ascii=False, separators=(",", ":"))
      f.write("\n")
    print("wrote", os.path.relpath(REFERENCE, ROOT))
  else:
    with open(REFERENCE, encoding="utf-8") as f:
      failures += compare(got, json.load(f))
  for line in failures:
    print("MISMATCH", line)
  print("OK" if not failures else f"{len(failures)} mismatches")
  shutil.rmtree(TMP, ignore_errors=True)
  sys.exit(1 if failures else 0)


if __name__ == "__main__":
  main()
