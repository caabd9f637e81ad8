"""Builds which_function, a multiple-choice task from text no one here wrote: the first
sentence of the docstring of a public module-level function of Python's standard library
(its .py files, which ship with every Python, read with `ast`), and four function names to
choose from, the true one and three of other modules. Chance is 25%.

    python scripts/make_which_function_task.py --out=tasks/     # 400 documents, 100 few-shot
    python -m jaxtrain.lm_eval --model=GGUF --tasks=tasks/which_function.json --num_fewshot=5

Tests, IDLE, lib2to3 and encodings are left out; a sentence that names its function, or
that two functions share, is too. The few-shot examples come from a disjoint fifth of the
modules (by crc32 of the module's path), so no example gives an answer away. Writes
which_function.jsonl, which_function_fewshot.jsonl and which_function.json (the spec, in
jaxtrain/evals/lm_tasks.py's format). The same Python and arguments write the same bytes.
Lesson 8 of scripts/lessons.py (scripts/lessons_real.py) scores SmolLM2 on it.
"""

import argparse
import ast
import collections
import os
import random
import re
import sys
import sysconfig
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stdlib_prose import write_jsonl  # noqa: E402  pylint: disable=wrong-import-position

TASK = "which_function"
TASK_QUERY = "Python docstring: {sentence}\nFunction name:"
TASK_FEWSHOT_SHARE = 5              # One module in 5 (by crc32 of its path) gives the few-shot examples.
STDLIB_SKIP = {"test", "tests", "idle_test", "idlelib", "lib2to3", "turtledemo", "encodings", "pydoc_data",
               "site-packages", "dist-packages", "__pycache__"}



def documented_functions(root=None):
  """[(path under the stdlib, function name, first sentence of its docstring)] of the public
  module-level functions of the standard library's .py files (tests, IDLE, lib2to3, encodings
  left out), where that sentence is 25-110 characters, starts with a capital, does not name
  the function and no other function has it."""
  root = root or sysconfig.get_paths()["stdlib"]
  found = []
  for directory, subdirectories, files in os.walk(root):
    subdirectories[:] = sorted(d for d in subdirectories if d not in STDLIB_SKIP)
    for name in sorted(files):
      if name.endswith(".py"):
        path = os.path.join(directory, name)
        found += [(os.path.relpath(path, root), *pair) for pair in _functions(path)]
  counts = collections.Counter(sentence for _, _, sentence in found)
  return [f for f in found if counts[f[2]] == 1]


def _functions(path):
  try:
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read())
  except (SyntaxError, UnicodeDecodeError, ValueError):
    return []  # A few files are test data in another Python's syntax.
  found = []
  for node in tree.body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
      sentence = first_sentence(ast.get_docstring(node) or "")
      if 25 <= len(sentence) <= 110 and sentence[0].isupper() and node.name.lower() not in sentence.lower():
        found.append((node.name, sentence))
  return found


def first_sentence(docstring):
  """The docstring's first sentence, from its first paragraph, on one line; '' if none ends."""
  paragraph = " ".join(docstring.split("\n\n")[0].split())
  match = re.match(r"(.+?[.!?])(?:\s|$)", paragraph)
  return match.group(1) if match else ""


def task_documents(functions, count, seed):
  """Up to `count` documents of lm_tasks' multiple-choice format, in a seeded random order: the
  query quotes a function's sentence, the choices are its name and three names of functions of
  other modules of `functions`, the true one at a seeded random place."""
  rng = random.Random(seed)
  names = sorted({name for _, name, _ in functions})
  by_module = collections.defaultdict(set)
  for module, name, _ in functions:
    by_module[module].add(name)
  docs = []
  for i in rng.sample(range(len(functions)), len(functions))[:count]:
    module, name, sentence = functions[i]
    distractors = rng.sample([n for n in names if n != name and n not in by_module[module]], 3)
    gold = rng.randrange(4)
    choices = distractors[:gold] + [name] + distractors[gold:]
    docs.append({"query": TASK_QUERY.format(sentence=sentence), "choices": choices, "gold": gold,
                 "source": f"{module}:{name}"})
  return docs


def build_task(num_docs=400, num_fewshot_docs=100, seed=0, root=None):
  """(documents, few-shot documents): the modules split by crc32 of their path, one in
  TASK_FEWSHOT_SHARE giving the few-shot examples, the rest the documents."""
  functions = documented_functions(root)
  fewshot = lambda module: zlib.crc32(module.encode()) % TASK_FEWSHOT_SHARE == 0  # noqa: E731
  return (task_documents([f for f in functions if not fewshot(f[0])], num_docs, seed),
          task_documents([f for f in functions if fewshot(f[0])], num_fewshot_docs, seed))


def write_task(directory, task=None):
  """DIR/which_function.json (the spec), .jsonl and _fewshot.jsonl of `task` (default: build_task()'s
  (documents, few-shot documents)); returns the spec's path."""
  docs, fewshot = task or build_task()
  write_jsonl(os.path.join(directory, f"{TASK}.jsonl"), docs)
  write_jsonl(os.path.join(directory, f"{TASK}_fewshot.jsonl"), fewshot)
  spec = {"docs": f"{TASK}.jsonl", "fewshot_docs": f"{TASK}_fewshot.jsonl"}
  path = os.path.join(directory, f"{TASK}.json")
  write_jsonl(path, [spec])  # One line of JSON: a spec file.
  return path


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  parser.add_argument("--out", default="tasks", help="The directory to write the task's three files into.")
  parser.add_argument("--num_docs", type=int, default=400)
  parser.add_argument("--num_fewshot_docs", type=int, default=100)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  path = write_task(args.out, build_task(args.num_docs, args.num_fewshot_docs, args.seed))
  print(f"Wrote {path} and its documents.")


if __name__ == "__main__":
  main()
