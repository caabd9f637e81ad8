"""How long multiple-choice scoring takes against plain forward passes over the same tokens.

    python scripts/bench_lm_eval.py --model=runs/code_lm --tasks=tasks/next_line.json [--num_fewshot=0]

Scores the task as `python -m jaxtrain.lm_eval` does (after one untimed run, so compiling is
not counted), then runs the same model's forward pass over as many tokens packed densely
into full-window rows (no padding at all), compiled once, in interleaved rounds; prints
both times and their ratio, and how many of the scored batches' slots were padding.
"""

import argparse
import time

import jax
import numpy as np

from jaxtrain.evals import harness as harness_lib
from jaxtrain.evals import lm_tasks
from jaxtrain.lm import language_model as lm_lib


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", required=True)
  parser.add_argument("--tasks", required=True, help="One task file (.jsonl or .json spec).")
  parser.add_argument("--num_fewshot", type=int, default=0)
  parser.add_argument("--batch_tokens", type=int, default=8192)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()

  model = lm_lib.load(args.model)
  task = lm_tasks.load(args.tasks)
  harness = harness_lib.Harness(model.module, model.strategy, model.variables, model.tokenizer, model.context_length,
                                eos_ids=model.eos_ids, batch_tokens=args.batch_tokens)
  prepared = harness.prepare(task, args.num_fewshot)
  rows, batches = harness.scorer.plan(prepared.pairs)
  real = sum(len(ids) for ids, _ in rows)
  slots = sum(harness.scorer._rows(width) * width for width, _ in batches)  # pylint: disable=protected-access

  # The same number of tokens, densely packed into rows of the full window.
  width = model.context_length
  dense_rows = -(-real // width)
  per_batch = max(1, args.batch_tokens // width)
  tokens = np.random.default_rng(0).integers(3, model.tokenizer.vocab_size, (per_batch, width)).astype(np.int32)
  forward = jax.jit(lambda v, t: model.module.apply(v, t, train=False)[0].sum())
  num_dense = -(-dense_rows // per_batch)

  def score():
    harness.run(prepared, model.variables)

  def dense():
    for _ in range(num_dense):
      forward(model.variables, tokens).block_until_ready()

  score(), dense()  # Compile both.
  times = {"score": [], "dense": []}
  for _ in range(args.rounds):
    for name, fn in (("score", score), ("dense", dense)):
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  s, d = min(times["score"]), min(times["dense"])
  print(f"{task.name}: {len(prepared.docs)} documents, {len(rows)} (context, choice) rows, {real:,} tokens, "
        f"{len(batches)} batches in {len({w for w, _ in batches})} buckets; padding {1 - real / slots:.1%} of slots")
  print(f"scoring (best of {args.rounds}): {s:.2f} s; dense forward over {num_dense * per_batch * width:,} tokens: "
        f"{d:.2f} s; ratio {s / d:.2f}")


if __name__ == "__main__":
  main()
