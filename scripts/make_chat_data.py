"""Writes a small chat data set made here, from text every Python ships: questions about
the standard library's public functions, answered with the first paragraph of each
function's docstring, as JSONL lines {"messages": [user, assistant]} (format 'chat').

    python scripts/make_chat_data.py --out=data/stdlib_chat.jsonl          # 245 conversations
    python -m jaxtrain.launch --config=experiments/chat_sft.py:data/stdlib_chat.jsonl \
        --config.init_from.gguf="$(python scripts/fetch_model.py smollm2-135m-instruct)" --workdir=runs/chat

The questions come in a few phrasings, chosen by a seeded generator; a tenth of the
conversations carry a system message. The same arguments write the same bytes.
"""

import argparse
import importlib
import inspect
import json
import os
import sys
import warnings

import numpy as np

MODULES = ("textwrap", "shlex", "fnmatch", "glob", "bisect", "heapq", "colorsys", "keyword", "calendar", "string",
           "copy", "json", "os.path", "shutil", "statistics", "math", "itertools", "functools", "operator", "random",
           "re", "base64", "binascii", "difflib", "html", "urllib.parse", "zlib", "gzip", "csv", "datetime", "time",
           "pathlib", "tempfile", "fractions", "decimal", "collections", "hashlib", "secrets", "uuid", "ipaddress")
QUESTIONS = ("What does {name} do in Python?", "Explain {name} briefly.", "What is `{name}` for?",
             "In one paragraph: what does Python's {name} do?")
SYSTEM = "You answer questions about the Python standard library in one paragraph."


def answers():
  """(qualified name, first docstring paragraph) of each public function, in a fixed order."""
  found = []
  for module_name in MODULES:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      module = importlib.import_module(module_name)
    for name in sorted(dir(module)):
      obj = getattr(module, name)
      if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isbuiltin(obj)):
        continue
      doc = inspect.getdoc(obj) or ""
      paragraph = " ".join(doc.split("\n\n")[0].split())
      if 40 <= len(paragraph) <= 400 and not paragraph.startswith(name + "("):
        found.append((f"{module_name}.{name}", paragraph))
  return found


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="the JSONL file to write (new)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if os.path.exists(args.out):
    sys.exit(f"error: {args.out} exists; give a new file")
  rng = np.random.default_rng(args.seed)
  lines = []
  for name, paragraph in answers():
    messages = [{"role": "system", "content": SYSTEM}] if rng.random() < 0.1 else []
    messages += [{"role": "user", "content": QUESTIONS[rng.integers(len(QUESTIONS))].format(name=name)},
                 {"role": "assistant", "content": paragraph}]
    lines.append(json.dumps({"messages": messages}, ensure_ascii=False))
  parent = os.path.dirname(os.path.abspath(args.out))
  if os.path.exists(parent) and not os.path.isdir(parent):
    sys.exit(f"error: {parent} is not a directory; give --out in a directory")
  os.makedirs(parent, exist_ok=True)
  partial = f"{args.out}.partial-{os.getpid()}"
  with open(partial, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  os.replace(partial, args.out)
  print(f"wrote {len(lines)} conversations to {args.out}")


if __name__ == "__main__":
  main(sys.argv[1:])
