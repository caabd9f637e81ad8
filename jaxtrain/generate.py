"""Command line: completions from a language model.

    python -m jaxtrain.generate --model=runs/code_lm --prompt='def '
    python -m jaxtrain.generate --model=path/to/hf_llama_dir --prompts_file=prompts.txt \\
        --max_new_tokens=128 --temperature=0.8 --top_p=0.95 --seed=1 --stop='\\n\\n'

--model is a jaxtrain work directory (newest checkpoint, or --step) or a Hugging Face
Llama directory. --prompt may be given several times. --prompts_file holds one prompt per
line ('\\n' and '\\t' in a line stand for a newline and a tab), or, for a .jsonl file, one
{"prompt": ...} object per line. Each completion is printed after its prompt, under a
'--- N ---' line; --output also writes {"prompt", "completion"} rows to a JSONL file.
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging

from jaxtrain.checkpoints import checkpointer as checkpoint
from jaxtrain.lm import language_model as lm_lib
from jaxtrain.errors import UserError, exit_with

_MODEL = flags.DEFINE_string("model", None, "A jaxtrain work directory or a Hugging Face Llama directory.")
_STEP = flags.DEFINE_integer("step", None, "The checkpoint of a work directory (default: the newest).")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "A prompt; repeat the flag for several.")
_PROMPTS_FILE = flags.DEFINE_string("prompts_file", None, "Prompts, one per line, or a .jsonl with 'prompt'.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 128, "At most this many new tokens per prompt.", lower_bound=1)
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0: greedy; higher: more random.", lower_bound=0.0)
_TOP_K = flags.DEFINE_integer("top_k", None, "Sample among the k most likely tokens only.", lower_bound=1)
_TOP_P = flags.DEFINE_float("top_p", None, "Sample among the most likely tokens holding this much probability.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed of the sampling.")
_STOP = flags.DEFINE_multi_string("stop", [], "End a completion before this string ('\\n' escapes work).")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Computation dtype (default: the model's).")
_OUTPUT = flags.DEFINE_string("output", None, "Also write {'prompt', 'completion'} rows to this JSONL file.")


def _unescape(text):
  return text.replace("\\n", "\n").replace("\\t", "\t")


def read_prompts(path):
  if not os.path.isfile(path):
    raise UserError(f"--prompts_file={path}: no such file")
  with open(path, encoding="utf-8") as f:
    lines = [line.rstrip("\n") for line in f if line.strip()]
  if not path.endswith(".jsonl"):
    return [_unescape(line) for line in lines]
  prompts = []
  for number, line in enumerate(lines, 1):
    try:
      prompts.append(json.loads(line)["prompt"])
    except (ValueError, KeyError, TypeError):
      raise UserError(f"--prompts_file={path}, line {number}: not a JSON object with a 'prompt' string") from None
  return prompts


def main(argv):
  if len(argv) > 1:
    exit_with(f"unexpected arguments: {' '.join(argv[1:])}")
  if _MODEL.value is None:
    exit_with("--model is required: a jaxtrain work directory or a Hugging Face Llama directory")
  logging.set_verbosity(logging.WARNING)
  logging.get_absl_handler().addFilter(checkpoint.QuietReading())
  try:
    prompts = [_unescape(p) for p in _PROMPT.value] + (read_prompts(_PROMPTS_FILE.value) if _PROMPTS_FILE.value else [])
    if not prompts:
      raise UserError("give --prompt=TEXT (repeatable) or --prompts_file=FILE")
    if _TOP_P.value is not None and not 0 < _TOP_P.value <= 1:
      raise UserError(f"--top_p must be in (0, 1], got {_TOP_P.value}")
    model = lm_lib.load(_MODEL.value, _STEP.value, dtype=_DTYPE.value)
    completions = model.generate(prompts, max_new_tokens=_MAX_NEW.value, temperature=_TEMPERATURE.value,
                                 top_k=_TOP_K.value, top_p=_TOP_P.value, seed=_SEED.value,
                                 stop=[_unescape(s) for s in _STOP.value])
  except UserError as e:
    exit_with(e)
  for number, (prompt, completion) in enumerate(zip(prompts, completions), 1):
    print(f"--- {number} ---\n{prompt}{completion}")
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w", encoding="utf-8") as f:
      for prompt, completion in zip(prompts, completions):
        f.write(json.dumps({"prompt": prompt, "completion": completion}, ensure_ascii=False) + "\n")
  sys.stdout.flush()


if __name__ == "__main__":
  app.run(main)
