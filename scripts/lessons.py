"""The lessons of fine-tuning, measured: four small experiments on real data that run on a
CPU, each printed as a markdown table and drawn as a plot.

    python scripts/lessons.py --code_lm=runs/code_lm              # all four: 14.6 min on 2 CPU cores
    python scripts/lessons.py --lessons=1,2                        # no language model needed: 2.6 min
    python scripts/lessons.py --lessons=2 --quick --out=/tmp/l     # tiny budgets: checks the plumbing
    python scripts/lessons.py --model=GGUF                         # lessons 5-8: scripts/lessons_real.py

1. **The learning rate.** experiments/digits.py (the CNN, 40 epochs) at three values of
   optimizer.lr: too high (1: the loss explodes, then the network is stuck at chance), too
   low (1e-5: it barely moves in the budget), well chosen (3e-3, the default).
2. **Overfitting.** A small Llama (0.5 M parameters) trained from scratch on 54 KB of English
   prose (the paragraphs of idlelib/NEWS.txt, which ships with Python; 15% held out): the
   training loss falls towards zero while the held-out loss turns at step 140 and rises.
   Then the same run with dropout 0.1 (model.embedding_/attention_/residual_dropout), and
   with early stopping on the held-out loss (config.early_stopping), and what each buys.
3. **Catastrophic forgetting.** The code LM (`--code_lm`, a run of experiments/code_lm.py,
   pre-trained on the standard library's .py files) fine-tuned for 100 steps on the English
   prose that ships with Python beside the code (idlelib's NEWS, README and help.html,
   LICENSE.txt, email/architecture.rst, ...; no .py file, so none of it in the pre-training
   data), split into paragraphs with 10% held out. The old domain's loss (the validation
   files of the pre-training data, as code_lm's own `val` evaluator measures it) before and
   after, for full fine-tuning at the pre-training's peak rate (3e-3) and at a tenth of it,
   with 20% of every batch replayed from the old data (input.data.mixture), and with LoRA
   adapters on every projection (config.lora).
4. **Zero-, one- and few-shot.** `python -m jaxtrain.lm_eval` on the next_line task
   (scripts/make_next_line_task.py, 1,000 questions) at k = 0, 1 and 5 (`--shots`,
   `--limit`).

Every training is the user's command, `python -m jaxtrain.launch --config=... --workdir=...
--config.KEY=VALUE`, printed before it runs. The language-model experiments of lessons 2
and 3 are this file's own get_config: `--config=scripts/lessons.py:overfit` (and
`:overfit:early_stopping`), `scripts/lessons.py:finetune:RUN`, `:finetune_mix:RUN`,
`:finetune_lora:RUN` (the model section, tokenizer, row length and training data of the
pre-trained RUN, read from its config.json). Numbers come from each run's metrics.jsonl.

`--out=DIR` (runs/lessons) receives lessons.json (every number), lessons.md (the tables),
lesson_<n>_<name>.png (matplotlib, optional: `pip install matplotlib`; without it the plots
are skipped with one line) and DIR/<n>_<name>/<run>/ per run, with the run's output in
<run>.log beside it. A finished run is reused when the script runs again (its command is
kept in <run>.done; a changed command starts that run afresh), so an interrupted script
resumes, and its interrupted run resumes from its checkpoint as every jaxtrain run does.
jaxtrain evaluates at scheduled steps only, never at step 0, and `--mode=eval` writes into
the directory it evaluates, so lesson 3's "before" is `--mode=eval` in
DIR/3_forgetting/before/, whose checkpoints/ is a link to the pre-trained run's.

Measured 2026-11-24 on a 2-core CPU (no accelerator), code_lm of 400 steps, the machine
shared with other jobs for part of the time (load average up to 5): 876 s of wall time
(lesson 1: 47 s, 2: 109 s, 3: 570 s, 4: 148 s). Lesson 3's two full fine-tuning runs took
158-167 s each under that load, the mixture and LoRA runs 101 and 104 s with less of it.
The tables and plots: docs/lessons.md and docs/lessons/.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # Its two modules beside it.
from lessons_plots import markdown, plot  # noqa: E402  pylint: disable=wrong-import-position
from stdlib_prose import PROSE_FILES, prose_documents, write_jsonl  # noqa: E402  pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THIS = os.path.abspath(__file__)
DIGITS = os.path.join(ROOT, "experiments", "digits.py")
MAKE_TASK = os.path.join(ROOT, "scripts", "make_next_line_task.py")

OVERFIT_FILES = ("idlelib/NEWS.txt",)  # Lesson 2's small text.
VALIDATION_FRACTION = 0.1              # Of the paragraphs (by hash): lesson 3's held-out slice,
OVERFIT_VALIDATION_FRACTION = 0.15     # and lesson 2's.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NAMES = {1: "learning_rate", 2: "overfitting", 3: "forgetting", 4: "fewshot",
         5: "learning_rate", 6: "overfitting", 7: "forgetting", 8: "fewshot"}  # 5-8: a real model (--model).


# ---- The experiments of lessons 2 and 3, for jaxtrain.launch ------------------------------


def get_config(arg):
  """`--config=scripts/lessons.py:ARG`. ARG 'overfit': lesson 2's small Llama from scratch
  (set --config.input.data.files); 'overfit:early_stopping': the same, stopped by val/loss.
  'finetune:RUN', 'finetune_mix:RUN', 'finetune_lora:RUN':
  lesson 3's fine-tuning of the language model RUN (its newest checkpoint, model section,
  tokenizer and seq_len) on new text (set --config.input.data.files, or
  .mixture.new.files), evaluated on the new text's validation split (`new`, every 25 steps)
  and on the validation split of RUN's own training data (`old`, at the end)."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from jaxtrain.config import duration  # pylint: disable=import-outside-toplevel
  kind, _, run = (arg or "").partition(":")
  placeholder = ml_collections.config_dict.placeholder
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.input = ml_collections.ConfigDict()
  c.input.pp = ""
  c.task = dict(name="next_token")
  c.parallel = dict(strategy="jit", mesh=dict(data=-1, fsdp=1, tensor=1), rules=())
  c.evals = ml_collections.ConfigDict()
  if kind == "overfit":
    # 0.5 M parameters for ~13 k training tokens: it can learn the text by heart.
    if run == "early_stopping":  # 'overfit:early_stopping': stop when val/loss stops improving.
      c.early_stopping = dict(metric="val/loss", mode="min", patience=3, min_delta=0.01)
    elif run:
      raise ValueError(f"unknown lessons config '{arg}': use overfit or overfit:early_stopping")
    c.update(duration("total", steps=400))
    c.update(duration("log_every", steps=10))
    c.input.data = dict(format="jsonl", files=placeholder(str), field="text", split="train",
                        validation_fraction=OVERFIT_VALIDATION_FRACTION, seq_len=64,
                        tokenizer=dict(kind="bpe", vocab_size=512))
    c.input.batch_size = 16
    c.model = dict(name="llama", vocab_size=512, dim=128, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=384,
                   embedding_dropout=0.0, attention_dropout=0.0, residual_dropout=0.0, scan_layers=False)
    c.optimizer = dict(name="adamw", lr=3e-3, weight_decay=0.0, grad_clip_norm=1.0)
    c.schedule = dict(name="constant", **duration("warmup", steps=20))
    c.evals.val = dict(type="lm", data=dict(split="validation"), **duration("every", steps=20))
    c.checkpoint = dict(keep=2, **duration("every", steps=200))
    return c
  if kind not in ("finetune", "finetune_mix", "finetune_lora") or not run:
    raise ValueError(f"unknown lessons config '{arg}': use overfit, finetune:RUN, finetune_mix:RUN or finetune_lora:RUN")
  pre = pretrained(run)
  c.update(duration("total", steps=100))
  c.update(duration("log_every", steps=10))
  new = dict(format="jsonl", files=placeholder(str), field="text", validation_fraction=VALIDATION_FRACTION)
  if kind == "finetune_mix":
    c.input.data = dict(mixture=dict(new=dict(**new, weight=0.8), old=dict(**pre["data"], weight=0.2)),
                        split="train", seq_len=pre["seq_len"], tokenizer=pre["tokenizer"])
    on_new, on_old = dict(source="new", split="validation"), dict(source="old", split="validation")
  else:
    c.input.data = dict(**new, split="train", seq_len=pre["seq_len"], tokenizer=pre["tokenizer"])
    on_new, on_old = dict(split="validation"), dict(**pre["data"], split="validation")
  c.input.batch_size = 8
  c.model = pre["model"]
  c.init_from = dict(workdir=run)
  if kind == "finetune_lora":
    c.lora = dict(rank=8, alpha=16.0, targets=LORA_TARGETS)
  # code_lm's own optimizer and peak rate, held constant after a short warmup.
  c.optimizer = dict(name="adamw", lr=3e-3, b2=0.95, weight_decay=0.1, grad_clip_norm=1.0)
  c.schedule = dict(name="constant", **duration("warmup", steps=10))
  c.evals.new = dict(type="lm", data=on_new, batch_size=32, **duration("every", steps=25))
  c.evals.old = dict(type="lm", data=on_old, batch_size=64)  # Once, at the end: ~30 s for code_lm.
  c.checkpoint = dict(keep=1, **duration("every", steps=100))
  return c


def pretrained(run):
  """What lesson 3 takes from the pre-trained run: its model section, seq_len, tokenizer
  file and training data section (without split, seq_len and tokenizer)."""
  path = os.path.join(run, "config.json")
  if not os.path.isfile(path):
    raise ValueError(f"{run} has no config.json: --code_lm must be a jaxtrain run of a language model")
  with open(path, encoding="utf-8") as f:
    config = json.load(f)
  data = config["input"]["data"]
  if "mixture" in data or config.get("model", {}).get("name") != "llama":
    raise ValueError(f"{run} must be a language model (model.name 'llama') trained on one source, not a mixture")
  return {"model": config["model"], "seq_len": data["seq_len"], "tokenizer": tokenizer_path(run, data),
          "data": {k: v for k, v in data.items() if k not in ("split", "seq_len", "tokenizer") and v is not None}}


def tokenizer_path(run, data):
  """The run's tokenizer file: its copy beside config.json, else (runs from before it kept
  one) the file its config names or trained, found again in the data cache."""
  for name in ("tokenizer.json", "tokenizer.model"):
    if os.path.exists(os.path.join(run, name)):
      return os.path.abspath(os.path.join(run, name))
  import ml_collections  # pylint: disable=import-outside-toplevel
  from jaxtrain import config as config_lib  # pylint: disable=import-outside-toplevel
  from jaxtrain.lm import language_model as lm
  return lm.run_tokenizer(run, config_lib.Reader(ml_collections.ConfigDict(data))).path


# ---- Running commands, reusing finished ones ------------------------------------------------


class Runner:
  """Runs the lessons' commands one at a time, each logged to <run>.log; a command kept in
  <run>.done is finished and not run again."""

  def __init__(self):
    self.seconds = 0.0  # Of the commands run or reused since it was last reset.

  def __call__(self, workdir, command, *, allow_failure=False):
    """Runs `command` (argv without the python) for `workdir`; returns (seconds, error line or None)."""
    done_path, log_path = workdir + ".done", workdir + ".log"
    printable = "$ python " + " ".join(_quote(a) for a in command)
    if os.path.exists(done_path):
      with open(done_path, encoding="utf-8") as f:
        done = json.load(f)
      if done["command"] == command:
        print(f"{printable}   [finished before: reused]", flush=True)
        self.seconds += done["seconds"]
        return done["seconds"], done["error"]
      print(f"{os.path.relpath(workdir)}: another command made it; starting afresh", flush=True)
      for path in (workdir, done_path):
        if os.path.isdir(path) and not os.path.islink(path):
          shutil.rmtree(path)
        elif os.path.lexists(path):
          os.remove(path)
    print(printable, flush=True)
    os.makedirs(os.path.dirname(workdir), exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "a", encoding="utf-8") as log:
      result = subprocess.run([sys.executable, *command], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - start
    self.seconds += seconds
    error = None
    if result.returncode:
      with open(log_path, encoding="utf-8") as f:
        lines = f.read().splitlines()
      errors = [line for line in lines if line.startswith("error:")]
      error = errors[-1] if errors else f"exit status {result.returncode}"
      if not allow_failure:
        print("\n".join(lines[-20:]), file=sys.stderr)
        raise SystemExit(f"{printable} failed ({error}); its output is in {log_path}")
      print(f"  -> {error}", flush=True)
    print(f"  ({seconds:.0f} s)", flush=True)
    with open(done_path, "w", encoding="utf-8") as f:
      json.dump({"command": command, "seconds": seconds, "error": error}, f)
    return seconds, error


def _quote(arg):
  return f"'{arg}'" if re.search(r"[\s()'\[\]|,*]", arg) else arg


def launch(config, workdir, *overrides, mode=None):
  return ["-m", "jaxtrain.launch", f"--config={config}", f"--workdir={workdir}", *(["--mode=" + mode] if mode else []),
          *overrides]


def read_rows(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def series(rows, key):
  """[(step, value)] of `key`, in step order (a step written twice: its last row)."""
  return sorted({r["step"]: r[key] for r in rows if key in r}.items())


# ---- The lessons --------------------------------------------------------------------------
# Each returns {'title', 'columns', 'rows' (lists of cells), 'notes', 'runs' (the numbers)}.


def lesson_1(run, out, quick):
  """Three learning rates on the digits CNN."""
  rates = (("too high", 1.0), ("well chosen", 3e-3), ("too low", 1e-5))
  budget = (["--config.total_epochs=0", "--config.total_steps=60", "--config.log_every_steps=5",
             "--config.evals.val.every_epochs=0", "--config.evals.val.every_steps=20"] if quick else
            ["--config.log_every_steps=10", "--config.evals.val.every_epochs=5"])
  runs, table = {}, []
  for label, lr in rates:
    workdir = os.path.join(out, f"lr_{lr:g}")
    seconds, error = run(workdir, launch(DIGITS, workdir, f"--config.optimizer.lr={lr:g}", *budget), allow_failure=True)
    rows = read_rows(workdir)
    train, val = series(rows, "train/loss"), series(rows, "val/loss")
    acc = series(rows, "val/accuracy")
    runs[label] = {"lr": lr, "train_loss": train, "val_loss": val, "val_accuracy": acc, "seconds": seconds,
                   "error": error}
    # A run stopped by a non-finite loss (an `error:` line) may have few rows, or none.
    table.append([label, f"{lr:g}", _f(train[0][1]) if train else "-", _f(max(v for _, v in train)) if train else "-",
                  _f(train[-1][1]) if train else "-", _f(val[-1][1]) if val else "-", _f(acc[-1][1]) if acc else "-",
                  f"{seconds:.0f} s" + (f" ({error})" if error else "")])
  steps = max((s for r in runs.values() for s, _ in r["train_loss"]), default=0)
  notes = (f"experiments/digits.py (CNN, 151,402 parameters, batch 128, adamw with cosine decay), {steps} steps. "
           "`train/loss` is the mean over the steps since the previous log (every "
           f"{5 if quick else 10} steps); val on the 359 test images. Chance is a loss of ln 10 = 2.303 and an "
           "accuracy of 0.1.")
  return {"title": "Lesson 1: the learning rate",
          "columns": ["run", "optimizer.lr", "train loss, first log", "train loss, max", "train loss, final",
                      "val loss, final", "val accuracy, final", "wall"],
          "rows": table, "notes": notes, "runs": runs}


def lesson_2(run, out, quick):
  """A small LM from scratch on a small text: plain, dropout, early stopping."""
  data = write_jsonl(os.path.join(out, "news.jsonl"), prose_documents(OVERFIT_FILES))
  base = [f"--config.input.data.files={data}"]
  log_every, eval_every = (5, 10) if quick else (10, 20)
  if quick:
    base += ["--config.total_steps=40", f"--config.evals.val.every_steps={eval_every}",
             f"--config.log_every_steps={log_every}"]
  dropout = [f"--config.model.{k}_dropout=0.1" for k in ("embedding", "attention", "residual")]
  variants = (("plain", "plain", "overfit", []), ("dropout 0.1", "dropout", "overfit", dropout),
              ("early stopping", "early_stopping", "overfit:early_stopping", []))
  runs, table = {}, []
  for label, directory, arg, extra in variants:
    workdir = os.path.join(out, directory)
    seconds, _ = run(workdir, launch(f"{THIS}:{arg}", workdir, *base, *extra))
    rows = read_rows(workdir)
    train, val = series(rows, "train/loss"), series(rows, "val/loss")
    best_step, best = min(val, key=lambda sv: sv[1])
    runs[label] = {"train_loss": train, "val_loss": val, "best_val_loss": best, "best_step": best_step,
                   "final_val_loss": val[-1][1], "final_train_loss": train[-1][1], "steps": max(r["step"] for r in rows),
                   "seconds": seconds, "val_tokens": series(rows, "val/num_tokens")[-1][1]}
    table.append([label, f"{_f(best)} (step {best_step})", _f(val[-1][1]), _f(train[-1][1]),
                  _f(val[-1][1] - train[-1][1]), str(runs[label]["steps"]), f"{seconds:.0f} s"])
  with open(data, encoding="utf-8") as f:
    chars = sum(len(json.loads(line)["text"]) for line in f)
  notes = (f"A Llama of 524,928 parameters (dim 128, 2 layers, BPE vocabulary 512, rows of 64 tokens, batch 16, "
           f"adamw 3e-3 constant, no weight decay) from scratch on the {chars:,} characters of "
           f"{', '.join(OVERFIT_FILES)} (paragraphs; {OVERFIT_VALIDATION_FRACTION:.0%} held out: "
           f"{runs['plain']['val_tokens']:,} tokens). Losses in nats per token; train/loss is the mean over the "
           f"{log_every} steps before. Early stopping: patience 3 evaluations of val/loss (every {eval_every} steps), "
           "min_delta 0.01.")
  return {"title": "Lesson 2: overfitting, dropout and early stopping",
          "columns": ["run", "best held-out loss", "final held-out loss", "final train loss", "gap (final)",
                      "steps trained", "wall"],
          "rows": table, "notes": notes, "runs": runs}


def lesson_3(run, out, quick, code_lm):
  """Forgetting the old domain while fine-tuning on a new one, and three remedies."""
  code_lm = os.path.abspath(code_lm)
  data = write_jsonl(os.path.join(out, "prose.jsonl"), prose_documents(PROSE_FILES))
  steps = 8 if quick else 100
  budget = ([f"--config.total_steps={steps}", "--config.evals.new.every_steps=4", "--config.log_every_steps=2",
             f"--config.checkpoint.every_steps={steps}", "--config.schedule.warmup_steps=2"] if quick else [])
  files = f"--config.input.data.files={data}"
  # Before: the pre-trained checkpoint, evaluated by the same evaluators (a directory of its own).
  before = os.path.join(out, "before")
  os.makedirs(before, exist_ok=True)
  link = os.path.join(before, "checkpoints")
  if not os.path.lexists(link):
    os.symlink(os.path.join(code_lm, "checkpoints"), link)
  seconds, _ = run(before, launch(f"{THIS}:finetune:{code_lm}", before, files, mode="eval"))
  rows = read_rows(before)
  old_before, new_before = series(rows, "old/loss")[-1][1], series(rows, "new/loss")[-1][1]
  runs = {"before": {"old_loss": old_before, "new_loss": new_before, "seconds": seconds,
                     "old_tokens": series(rows, "old/num_tokens")[-1][1],
                     "new_tokens": series(rows, "new/num_tokens")[-1][1]}}
  methods = (("full, lr 3e-3", "full_lr3e-3", "finetune", []),
             ("full, lr 3e-4", "full_lr3e-4", "finetune", ["--config.optimizer.lr=3e-4"]),
             ("full, lr 3e-3, 20% old data", "mix_old20", "finetune_mix", []),
             ("LoRA r=8, lr 3e-3", "lora_r8", "finetune_lora", []))
  table = [["before (pre-trained)", "-", _f(old_before), "", _f(new_before), f"{seconds:.0f} s"]]
  for label, directory, kind, extra in methods:
    workdir = os.path.join(out, directory)
    data_key = files.replace("input.data.", "input.data.mixture.new.") if kind == "finetune_mix" else files
    seconds, _ = run(workdir, launch(f"{THIS}:{kind}:{code_lm}", workdir, data_key, *budget, *extra))
    rows = read_rows(workdir)
    old, new = series(rows, "old/loss")[-1][1], series(rows, "new/loss")
    trainable = _trainable(workdir + ".log")
    runs[label] = {"old_loss": old, "old_increase": old - old_before, "new_loss": new[-1][1], "new_curve": new,
                   "train_loss": series(rows, "train/loss"), "trainable": trainable, "seconds": seconds}
    table.append([label, f"{trainable:,}" if trainable else "?", _f(old), f"{old - old_before:+.3f}",
                  _f(new[-1][1]), f"{seconds:.0f} s"])
  pre = pretrained(code_lm)
  docs = sum(1 for _ in open(data, encoding="utf-8"))
  notes = (f"The pre-trained model: {code_lm} (dim {pre['model']['dim']}, {pre['model']['num_layers']} layers). "
           f"Every method: {steps} steps of batch 8 x {pre['seq_len']} tokens from the same start, adamw (b2 0.95, "
           f"weight decay 0.1), {2 if quick else 10} warmup steps then constant. Old domain: the pre-training data's validation "
           f"split ({runs['before']['old_tokens']:,} tokens); new domain: the held-out {VALIDATION_FRACTION:.0%} of "
           f"the {docs} prose documents ({runs['before']['new_tokens']:,} tokens). Losses in nats per token. "
           f"LoRA: rank 8, alpha 16 on {', '.join(LORA_TARGETS)}. 20% old data: "
           "input.data.mixture with weights 0.8 (new) and 0.2 (old).")
  return {"title": "Lesson 3: catastrophic forgetting",
          "columns": ["method", "trainable parameters", "old-domain loss after", "increase",
                      "new-domain held-out loss after", "wall"],
          "rows": table, "notes": notes, "runs": runs}


def _trainable(log_path):
  """The trainable parameter count from a run's start-up log line 'Parameters: N (M trainable, ...)'."""
  with open(log_path, encoding="utf-8") as f:
    found = re.findall(r"Parameters: [\d,]+ \(([\d,]+) trainable", f.read())
  return int(found[-1].replace(",", "")) if found else None


def lesson_4(run, out, quick, code_lm, shots, limit):
  """k-shot accuracy of the code LM on next_line."""
  task_dir = os.path.join(out, "task")
  sizes = ["--num_docs=40", "--num_fewshot_docs=10"] if quick else []
  run(task_dir, [MAKE_TASK, f"--out={task_dir}", *sizes])
  task = os.path.join(task_dir, "next_line.json")
  runs, table = {}, []
  for k in shots:
    workdir = os.path.join(out, f"{k}shot")
    seconds, _ = run(workdir, ["-m", "jaxtrain.lm_eval", f"--model={os.path.abspath(code_lm)}", f"--tasks={task}",
                               f"--num_fewshot={k}", f"--output_path={workdir}", *([f"--limit={limit}"] if limit else [])])
    with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
      result = json.load(f)["results"]["next_line"]
    runs[str(k)] = {**result, "seconds": seconds}
    table.append([str(k), f"{result['acc']:.3f} ± {result['acc_stderr']:.3f}",
                  f"{result['acc_norm']:.3f} ± {result['acc_norm_stderr']:.3f}", str(result["n"]), f"{seconds:.0f} s"])
  notes = (f"`python -m jaxtrain.lm_eval --model={code_lm} --tasks=next_line.json --num_fewshot=K"
           + (f" --limit={limit}" if limit else "") + "`: which of 4 lines (the true next line and 3 of the same "
           "indentation from other files) follows 4 lines of held-out standard-library code; chance is 0.25. "
           "Few-shot examples come from the validation files. ± is the standard error; wall includes loading the "
           "model and compiling.")
  return {"title": "Lesson 4: zero-, one- and few-shot", "columns": ["k", "acc", "acc_norm", "n", "wall"],
          "rows": table, "notes": notes, "runs": runs}


def _f(value):
  return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"


# ---- Main -----------------------------------------------------------------------------------


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  parser.add_argument("--code_lm", default=None, help="A run of experiments/code_lm.py (lessons 3 and 4).")
  parser.add_argument("--model", default=None, help="A GGUF file of SmolLM2-135M-Instruct (lessons 5-8): "
                      "`python scripts/fetch_model.py smollm2-135m-instruct` prints its path.")
  parser.add_argument("--lessons", default=None, help="Which lessons, e.g. 1,3 (default: 1,2,3,4; with --model, "
                      "5,6,7,8).")
  parser.add_argument("--out", default=os.path.join("runs", "lessons"))
  parser.add_argument("--quick", action="store_true", help="Tiny budgets: checks that everything runs.")
  parser.add_argument("--shots", default="0,1,5", help="Lessons 4 and 8: the k values.")
  parser.add_argument("--limit", type=int, default=None, help="Lessons 4, 7 and 8: score the first N documents only "
                      "(lessons 7 and 8: 100 by default).")
  args = parser.parse_args(argv)
  chosen = sorted({int(n) for n in (args.lessons or ("5,6,7,8" if args.model else "1,2,3,4")).split(",") if n.strip()})
  if not set(chosen) <= set(NAMES):
    parser.error(f"--lessons: the lessons are {', '.join(map(str, NAMES))}")
  if {3, 4} & set(chosen) and not args.code_lm:
    parser.error("lessons 3 and 4 need --code_lm=RUN, a run of experiments/code_lm.py")
  if args.code_lm and not os.path.isdir(os.path.join(args.code_lm, "checkpoints")):
    parser.error(f"--code_lm={args.code_lm} has no checkpoints/")
  if max(chosen) >= 5 and not args.model:
    parser.error("lessons 5-8 need --model=GGUF, SmolLM2-135M-Instruct's file: python scripts/fetch_model.py "
                 "smollm2-135m-instruct prints its path")
  if args.model and not (args.model.endswith(".gguf") and os.path.isfile(args.model)):
    parser.error(f"--model={args.model} is not a .gguf file")
  out = os.path.abspath(args.out)
  os.makedirs(out, exist_ok=True)
  json_path = os.path.join(out, "lessons.json")
  results = {}
  if os.path.exists(json_path):  # Lessons not run this time keep their numbers.
    with open(json_path, encoding="utf-8") as f:
      results = json.load(f).get("lessons", {})
  run = Runner()
  start = time.perf_counter()
  plotted, skipped = [], False
  for number in chosen:
    name = f"{number}_{NAMES[number]}"
    run.seconds = 0.0
    directory = os.path.join(out, name)
    if number in (1, 2):
      result = globals()[f"lesson_{number}"](run, directory, args.quick)
    elif number == 3:
      result = lesson_3(run, directory, args.quick, args.code_lm)
    elif number == 4:
      shots = [int(k) for k in args.shots.split(",")]
      result = lesson_4(run, directory, args.quick, args.code_lm, shots, args.limit or (40 if args.quick else None))
    else:
      import lessons_real  # pylint: disable=import-outside-toplevel  (it imports jax)
      result = lessons_real.run_lesson(number, run, out, args.quick, args.model,
                                       [int(k) for k in args.shots.split(",")], args.limit)
    result["wall_s"] = run.seconds  # Its commands' times, those of reused runs included.
    result["quick"] = args.quick
    results[name] = result
    print("\n" + markdown(result), flush=True)
    png = os.path.join(out, f"lesson_{name}.png")
    if plot(number, result, png):
      plotted.append(png)
    elif not skipped:
      skipped = True
      print("Plots skipped: matplotlib is not installed (pip install matplotlib).", flush=True)
  wall = time.perf_counter() - start
  commands = sum(results[f"{n}_{NAMES[n]}"]["wall_s"] for n in chosen)
  with open(json_path, "w", encoding="utf-8") as f:
    json.dump({"lessons": results, "commands_s": commands, "this_run_s": wall, "quick": args.quick,
               "code_lm": args.code_lm, "model": args.model}, f, indent=1)
  with open(os.path.join(out, "lessons.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(markdown(results[k]) for k in sorted(results)))
  print(f"Wrote {json_path}, lessons.md" + (", " + ", ".join(os.path.basename(p) for p in plotted) if plotted else "")
        + f".\nWall time of the lessons' commands: {commands:.0f} s ("
        + ", ".join(f"lesson {n}: {results[f'{n}_{NAMES[n]}']['wall_s']:.0f} s" for n in chosen)
        + f"); this invocation: {wall:.0f} s.")
  return results


if __name__ == "__main__":
  main()
