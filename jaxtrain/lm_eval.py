"""Command line: zero- and few-shot scores of a language model on tasks from JSONL files,
with lm-evaluation-harness (0.4) semantics, so numbers compare with published ones.

    python -m jaxtrain.lm_eval --model=runs/code_lm --tasks=next_line.jsonl --num_fewshot=5 \\
        --output_path=out/next_line_5shot --log_samples

--model is whatever jaxtrain.lm.load takes: a jaxtrain work directory (newest checkpoint,
or --step), a Hugging Face model directory or a GGUF file. --tasks is a comma-separated list of .jsonl
task files (or .json task specs); the task's name is the file's stem. Task files are
described in jaxtrain/evals/lm_tasks.py. The results table goes to stdout; with
--output_path, DIR/results.json ({"results": {TASK: {"acc", "acc_stderr", "acc_norm",
"acc_norm_stderr", "n"}}, ...}) and, with --log_samples, DIR/samples_TASK.jsonl, one line
per document ({"doc_id", "context", "loglikelihoods", "acc", "acc_norm"}; generation:
{"doc_id", "context", "completion", "answer", "exact_match"}). Every task file is read and
checked before the model is loaded, and nothing is written unless all tasks ran.
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging

from jaxtrain.checkpoints import checkpointer as checkpoint
from jaxtrain import errors
from jaxtrain.errors import UserError, exit_with
from jaxtrain.evals import harness as harness_lib
from jaxtrain.evals import lm_tasks
from jaxtrain.lm import language_model as lm_lib
from jaxtrain.rundir import storage

_MODEL = flags.DEFINE_string("model", None, "A jaxtrain work directory, a Hugging Face model directory or a .gguf file.")
_STEP = flags.DEFINE_integer("step", None, "The checkpoint of a work directory (default: the newest).")
_TASKS = flags.DEFINE_string("tasks", None, "Task files (.jsonl, or .json specs), comma-separated.")
_NUM_FEWSHOT = flags.DEFINE_integer("num_fewshot", 0, "Examples in each context (k-shot).", lower_bound=0)
_FEWSHOT_FILE = flags.DEFINE_string("fewshot_file", None, "Few-shot documents (.jsonl); comma-separated, one "
                                    "per task, for several tasks. Default: the task's other documents.")
_FEWSHOT_SEED = flags.DEFINE_integer("fewshot_seed", lm_tasks.FEWSHOT_SEED, "Seed of the few-shot draws.")
_LIMIT = flags.DEFINE_integer("limit", None, "Score only the first N documents of each task.", lower_bound=1)
_OUTPUT_PATH = flags.DEFINE_string("output_path", None, "Write results.json (and samples) to this directory.")
_LOG_SAMPLES = flags.DEFINE_bool("log_samples", False, "Also write samples_TASK.jsonl, one line per document.")
_ADD_BOS = flags.DEFINE_bool("add_bos_token", None, "BOS before every context. Default: as the harness does, where "
                             "the tokenizer itself adds one (Llama's, SentencePiece models and the BPE a run trains "
                             "do; SmolLM2's does not).")
_BATCH_TOKENS = flags.DEFINE_integer("batch_tokens", 8192, "Tokens per scoring batch.", lower_bound=1)
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Computation dtype (default: the model's).")


def load_tasks(tasks_flag, fewshot_flag):
  paths = [p for p in (tasks_flag or "").split(",") if p]
  if not paths:
    raise UserError("--tasks is required: one or more task files (.jsonl), comma-separated")
  fewshot = [p for p in (fewshot_flag or "").split(",") if p]
  if fewshot and len(fewshot) != len(paths):
    raise UserError(f"--fewshot_file names {len(fewshot)} files for {len(paths)} tasks; give one per task")
  tasks = []
  for i, path in enumerate(paths):
    tasks.append(lm_tasks.load(path, fewshot[i] if fewshot else None))
  names = [t.name for t in tasks]
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise UserError(f"two task files are both named {twice[0]!r}: results are keyed by the file's stem; rename one")
  return tasks


def check_output_path(path):
  """--output_path (absolute): a local directory that can be made (or is there) and takes
  new files (tried), checked before the model is loaded: results are written at the end."""
  if not path:
    return
  if storage.is_gcs(path):
    raise UserError(f"--output_path={path}: lm_eval writes a local directory; give a local path (then `gcloud "
                    f"storage cp -r` it to the bucket)")
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f"--output_path={path} is a file; give a directory")
  directory = path if os.path.isdir(path) else storage.existing_parent(path, "output_path")
  problem = storage.writable_problem(directory)
  if problem:
    raise UserError(f"--output_path={path}: cannot write in {directory} ({problem}); pick a writable place")


def table(results, shots):
  """lm-evaluation-harness's table: one row per task and metric."""
  rows = [("task", "k", "metric", "value", "stderr", "n")]
  for name, result in results.items():
    for metric in [m for m in ("acc", "acc_norm", "exact_match") if m in result]:
      stderr = result[f"{metric}_stderr"]
      rows.append((name, str(shots[name]), metric, f"{result[metric]:.4f}",
                   "N/A" if stderr is None else f"{stderr:.4f}", str(result["n"])))
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
  lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
  return "\n".join(lines)


def write_outputs(directory, results, shots, config, samples):
  """results.json and samples_TASK.jsonl, each written whole then renamed into place."""
  os.makedirs(directory, exist_ok=True)
  files = {"results.json": json.dumps({"results": results, "n-shot": shots, "config": config},
                                      indent=2, allow_nan=False) + "\n"}
  for name, records in samples.items():
    files[f"samples_{name}.jsonl"] = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
  for file_name, content in files.items():
    path = os.path.join(directory, file_name)
    with open(path + ".partial", "w", encoding="utf-8") as f:
      f.write(content)
    os.replace(path + ".partial", path)


def main(argv):
  if len(argv) > 1:
    exit_with(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _MODEL.value:
    exit_with("--model is required: a jaxtrain work directory, a Hugging Face model directory or a .gguf file")
  logging.get_absl_handler().addFilter(checkpoint.QuietReading())
  try:
    model_path, output_path = (storage.absolute_path(f.value, f.name) for f in (_MODEL, _OUTPUT_PATH))
    task_files, fewshot_files = (",".join(storage.absolute_path(p, f.name) for p in (f.value or "").split(",") if p)
                                 for f in (_TASKS, _FEWSHOT_FILE))
    tasks = load_tasks(task_files, fewshot_files)
    check_output_path(output_path)
    model = lm_lib.load(model_path, _STEP.value, dtype=_DTYPE.value)
    results, samples, add_bos = harness_lib.evaluate(model, tasks, _NUM_FEWSHOT.value, fewshot_seed=_FEWSHOT_SEED.value,
                                limit=_LIMIT.value, add_bos=_ADD_BOS.value, batch_tokens=_BATCH_TOKENS.value)
  except UserError as e:
    exit_with(e)
  shots = {name: _NUM_FEWSHOT.value for name in results}
  print(table(results, shots))
  if output_path:
    config = {"model": model.source, "tasks": task_files, "fewshot_file": fewshot_files or None,
              "fewshot_seed": _FEWSHOT_SEED.value, "limit": _LIMIT.value, "add_bos_token": add_bos}
    write_outputs(output_path, results, shots, config, samples if _LOG_SAMPLES.value else {})
  sys.stdout.flush()


if __name__ == "__main__":
  app.run(main, flags_parser=errors.parse_flags)
