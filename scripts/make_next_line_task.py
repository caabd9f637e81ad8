"""Builds "which line comes next", a multiple-choice task from code nobody here wrote: the
Python standard library's held-out files (the 'test' split of the stdlib_code dataset,
which no jaxtrain model trains on; few-shot examples from the 'validation' split).

    python scripts/make_next_line_task.py --out=tasks/            # 1,000 documents
    python -m jaxtrain.lm_eval --model=runs/code_lm --tasks=tasks/next_line.json --num_fewshot=5

Each document shows `--context_lines` consecutive lines of a file; the choices are the line
that follows and three lines from other files of the same split with the same indentation
(so indentation gives nothing away), in a seeded random order: chance is 25%. A line
qualifies when it holds at least 8 non-blank characters and is not a comment. Writes
next_line.jsonl, next_line_fewshot.jsonl and next_line.json (the spec: a newline between
the code and the choice, where the harness's default is a space).
"""

import argparse
import collections
import json
import os

import numpy as np

from jaxtrain.data import stdlib_code


def candidate_lines(files, context_lines):
  """[(file index, line index)] of the lines that may be asked for, and the files' lines."""
  split_lines = [text.split("\n") for _, text in files]
  found = []
  for f, lines in enumerate(split_lines):
    for i in range(context_lines, len(lines)):
      line = lines[i]
      if len(line.strip()) >= 8 and not line.lstrip().startswith("#") and any(p.strip() for p in lines[i - context_lines:i]):
        found.append((f, i))
  return found, split_lines


def indentation(line):
  return len(line) - len(line.lstrip(" "))


def build(split, num_docs, context_lines, num_choices, seed):
  files = stdlib_code.read_split(split)
  found, lines = candidate_lines(files, context_lines)
  by_indent = collections.defaultdict(list)
  for f, i in found:
    by_indent[indentation(lines[f][i])].append((f, i))
  rng = np.random.default_rng([seed, num_docs])
  docs = []
  for k in rng.permutation(len(found)):
    f, i = found[k]
    answer = lines[f][i]
    pool = [(g, j) for g, j in by_indent[indentation(answer)] if g != f]
    distractors = []
    for t in rng.permutation(len(pool)):
      line = lines[pool[t][0]][pool[t][1]]
      if line != answer and line not in distractors:
        distractors.append(line)
      if len(distractors) == num_choices - 1:
        break
    if len(distractors) < num_choices - 1:
      continue
    gold = int(rng.integers(num_choices))
    choices = distractors[:gold] + [answer] + distractors[gold:]
    docs.append({"query": "\n".join(lines[f][i - context_lines:i]), "choices": choices, "gold": gold,
                 "source": f"{files[f][0]}:{i + 1}"})
    if len(docs) == num_docs:
      break
  return docs


def write_jsonl(path, docs):
  with open(path, "w", encoding="utf-8") as f:
    for doc in docs:
      f.write(json.dumps(doc, ensure_ascii=False) + "\n")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="Directory for the task files.")
  parser.add_argument("--num_docs", type=int, default=1000)
  parser.add_argument("--num_fewshot_docs", type=int, default=100)
  parser.add_argument("--context_lines", type=int, default=4)
  parser.add_argument("--num_choices", type=int, default=4)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  docs = build("test", args.num_docs, args.context_lines, args.num_choices, args.seed)
  fewshot = build("validation", args.num_fewshot_docs, args.context_lines, args.num_choices, args.seed)
  write_jsonl(os.path.join(args.out, "next_line.jsonl"), docs)
  write_jsonl(os.path.join(args.out, "next_line_fewshot.jsonl"), fewshot)
  spec = {"docs": "next_line.jsonl", "fewshot_docs": "next_line_fewshot.jsonl", "target_delimiter": "\n"}
  with open(os.path.join(args.out, "next_line.json"), "w", encoding="utf-8") as f:
    json.dump(spec, f, indent=2)
    f.write("\n")
  print(f"Wrote {len(docs)} documents and {len(fewshot)} few-shot documents ({args.num_choices} choices, "
        f"{args.context_lines} lines of context) to {args.out}.")


if __name__ == "__main__":
  main()
