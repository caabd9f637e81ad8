"""Lessons 5-8 of scripts/lessons.py: the four lessons again on a real model, SmolLM2-135M-Instruct
(a GGUF file), fine-tuned as an email assistant (experiments/email_assistant.py) on mailboxes of
scripts/make_mailbox.py.

    python scripts/fetch_model.py smollm2-135m-instruct          # prints GGUF, the model's path
    python scripts/lessons.py --model=GGUF                         # lessons 5-8 (--lessons=5,7 for some)
    python scripts/lessons.py --model=GGUF --quick --out=/tmp/l    # tiny budgets: checks the plumbing

5. **The learning rate.** LoRA (the assistant's: rank 8 on every projection, cosine schedule)
   for 6 steps of batch 4 x 512 tokens (1.2 epochs) on a mailbox of 30 threads, at 1e-5 (too
   low), 1e-3 (the assistant's LR, well chosen) and 3e-2 (too high); then `--mode=lr_find` on
   the same config, 16 steps from 1e-5 to 0.1, and the rate it suggests.
6. **Overfitting.** LoRA at 3e-3 for 6 epochs (12 steps) on a mailbox of 12 threads, the
   held-out replies evaluated every epoch: plain (no LoRA dropout, no early stopping), with
   LoRA dropout 0.3, and with the assistant's early stopping (patience 2 evaluations).
7. **Catastrophic forgetting.** The model's general ability before and after 6 steps on the
   30-thread mailbox: its loss (and bits per byte) on English prose that ships with Python
   (scripts/stdlib_prose.py: LICENSE.txt and email/architecture.rst, HELDOUT_PROSE_FILES), and
   its zero-shot accuracy on lesson 8's task, scored at the end of the run by the
   `multiple_choice` evaluator (the harness of `python -m jaxtrain.lm_eval`, which gives the
   same numbers: checked on the quick run). Full fine-tuning at 1e-3 and at 1e-5, full at 1e-3
   with 25% of every batch replayed from the other prose files (IDLE's NEWS, README, help...:
   REPLAY_FILES, so replay never trains on the text forgetting is measured on), and LoRA at
   1e-3 (lesson 5's well-chosen run, reused). "Before" is a run of one step at learning rate
   0, which changes no weight (jaxtrain never evaluates at step 0).
8. **Zero-, one- and few-shot.** `python -m jaxtrain.lm_eval --model=GGUF` on which_function
   (scripts/make_which_function_task.py): the first sentence of the docstring of a public module-level function of
   Python's standard library (the .py files that ship with Python, read with `ast`), and four
   function names to choose from, the true one and three of other modules: chance is 25%.
   Few-shot examples come from other modules (a fifth of them, by crc32 of the path). k = 0, 1
   and 5 on the first 100 documents.

Every training is `python -m jaxtrain.launch --config=scripts/lessons_real.py:METHOD:MBOX[:REPLAY:HELDOUT:TASK]
--config.init_from.gguf=GGUF --config.KEY=VALUE ...`, printed before it runs: get_config is
the email assistant's config with what its overrides cannot say. Each run's cost: its wall
time, the tokens it trained on (steps x batch x row, prompts included; only the replies are
scored) or scored, and what those cost on one H100 of the dry run's table
(jaxtrain/training/accelerators.py) at the dry run's typical 40% of peak, for 6N FLOPs per
token (full fine-tuning), 4N (LoRA: the frozen base needs no weight gradients) or 2N
(scoring), N the model's parameters; evaluations not counted. XLA's compiled count (the dry
run's) would cost every config another start-up.

Measured, the quick run only (--quick: rows of 256 tokens, batch 2, 2 steps (lesson 6: 4), 20
documents), 2026-12-07 on 2 CPU cores shared with another job (load average 3-4): 2,662 s of
commands (lesson 5: 848 s, 6: 453 s, 7: 1,070 s, 8: 292 s), nearly all of it start-up
(loading the GGUF, compiling the step and the evaluators) and evaluation: 136-347 s per
training command, 74-141 s per lm_eval. The full run is budgeted at about an hour on 2
unloaded cores (~110 tokens/s in LoRA training, ~90 s of start-up a command). Measured at
full size, 2026-12-07, the cores shared with other jobs for most of it: lesson 5 in 1,796 s
(its four commands 295-717 s), lesson 6 in 1,030 s, lesson 7 in 1,156 s (alone; its four
new commands 264-306 s, and lesson 5's LoRA run 453 s), lesson 8 in 439 s; the tables are in
docs/lessons.md. FULL_HIGH was chosen by measurement: at 3e-4 the 6 steps forgot nothing
measurable, at 3e-3 the run diverged (zero-shot at chance), at 1e-3 it learns the mail and
forgets (prose +0.30 nats, zero-shot 0.59 -> 0.45).
"""

import importlib.util
import json
import math
import os
import re
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # lessons.py and its modules beside it.
# pylint: disable=wrong-import-position
import make_mailbox  # noqa: E402
from lessons import _f, _trainable, launch, read_rows, series  # noqa: E402
from make_which_function_task import TASK, write_task  # noqa: E402
from stdlib_prose import PROSE_FILES, prose_documents, write_jsonl  # noqa: E402
from jaxtrain.errors import UserError  # noqa: E402
from jaxtrain.modes.dry_run import TYPICAL_UTILIZATION as UTILIZATION  # noqa: E402
from jaxtrain.training.accelerators import ACCELERATORS  # noqa: E402
# pylint: enable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THIS = os.path.abspath(__file__)
ASSISTANT = os.path.join(ROOT, "experiments", "email_assistant.py")

THREADS, SMALL_THREADS = 30, 12     # The mailboxes of lessons 5 and 7, and of lesson 6.
MAIL_VALIDATION_FRACTION = 0.25     # Of the replies (by hash): ~640 scored tokens held out of 30 threads.
# Lesson 7's general prose, by file: forgetting is measured on text replay never trains on.
HELDOUT_PROSE_FILES = ("LICENSE.txt", "email/architecture.rst")
REPLAY_FILES = tuple(f for f in PROSE_FILES if f not in HELDOUT_PROSE_FILES)
REPLAY = 0.25                       # Lesson 7: the share of every batch replayed from the prose.
STEPS = 6                           # Lessons 5 and 7: 1.2 epochs of the 30 threads at batch 4.
RATES = (("too low", 1e-5), ("well chosen", None), ("too high", 3e-2))  # None: the assistant's LR.
FULL_HIGH, FULL_LOW = 1e-3, 1e-5
OVERFIT_EPOCHS, OVERFIT_LR, OVERFIT_DROPOUT = 6, 3e-3, 0.3
LR_FIND = (1e-5, 0.1, 16)           # --lr_find_min, _max, _steps.
LIMIT = 100                         # Documents of lesson 8 (and of lesson 7's zero-shot).
QUICK_BATCH, QUICK_SEQ_LEN, QUICK_STEPS, QUICK_LIMIT = 2, 256, 2, 20  # --quick: rows, steps and documents.
ACCELERATOR = "h100"
FLOPS_PER_TOKEN = {"full": 6, "lora": 4, "scoring": 2}  # Times N.
METHODS = ("lora", "lora_early_stopping", "full", "full_mix")



# ---- The experiments, for jaxtrain.launch --------------------------------------------------


def get_config(arg):
  """`--config=scripts/lessons_real.py:METHOD:MBOX[:REPLAY:HELDOUT:TASK]`: the email assistant on MBOX
  (set --config.init_from.gguf), its held-out share raised to MAIL_VALIDATION_FRACTION, without
  its samples (drafting replies on a CPU costs minutes) and early stopping, logging every step,
  one checkpoint at the end. METHOD: 'lora' (the assistant's adapters), 'lora_early_stopping'
  (with its early stopping), 'full' (no adapters: every weight trains), 'full_mix' (full, with
  REPLAY of every batch from the REPLAY file, a .jsonl of {'text'}). HELDOUT (another such
  file) and TASK (a multiple-choice task file) add the evaluators `prose` (all of HELDOUT) and
  `zeroshot` (TASK at 0 shots, the first LIMIT documents), once, at the end."""
  parts = (arg or "").split(":")
  method, mbox = parts[0], parts[1] if len(parts) > 1 else ""
  replay, heldout, task = parts[2:5] if len(parts) == 5 else (None, None, None)
  if method not in METHODS or len(parts) not in (2, 5) or not all(parts[1:]) or (method == "full_mix" and not replay):
    raise UserError(f"lessons_real config '{arg}': use METHOD:MBOX or METHOD:MBOX:REPLAY:HELDOUT:TASK (paths without "
                    f"':'), METHOD one of {', '.join(METHODS)}; full_mix needs REPLAY")
  c = assistant().get_config(mbox)
  c.log_every_steps = 1
  c.input.data.validation_fraction = MAIL_VALIDATION_FRACTION
  c.checkpoint = dict(keep=1)
  if "samples" in c.evals:
    del c.evals["samples"]
  if method != "lora_early_stopping":
    del c["early_stopping"]
  if method.startswith("full"):
    del c["lora"]
  if method == "full_mix":
    mail = {k: v for k, v in c.input.data.to_dict().items() if k not in ("split", "seq_len", "tokenizer")}
    c.input.data = ml_collections.ConfigDict(dict(
        mixture=dict(mail=dict(mail, weight=1 - REPLAY), prose=dict(_prose(replay), weight=REPLAY)),
        split="train", seq_len=c.input.data.seq_len, tokenizer=ml_collections.config_dict.placeholder(str)))
    c.evals.val.data.source = "mail"
  if heldout:
    c.evals.prose = dict(type="lm", data=dict(_prose(heldout), split="train"), batch_size=8)
    c.evals.zeroshot = dict(type="multiple_choice", task=task, num_fewshot=0, limit=LIMIT)
  return c


def _prose(path):
  """All of a prose file (the replayed and the held-out prose are different files)."""
  return dict(format="jsonl", files=path, field="text", validation_fraction=0.0)


def assistant():
  """experiments/email_assistant.py, the module."""
  spec = importlib.util.spec_from_file_location("email_assistant", ASSISTANT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# ---- What a run cost -----------------------------------------------------------------------


def cost(parameters, tokens, kind, accelerator=ACCELERATOR):
  """{'tokens', 'flops', 'chip_hours', 'dollars'} of `tokens` through a model of `parameters`
  (kind: 'full', 'lora' or 'scoring') on one `accelerator` of the dry run's table at UTILIZATION."""
  peak_tflops, _, price = ACCELERATORS[accelerator]
  flops = FLOPS_PER_TOKEN[kind] * parameters * tokens
  hours = flops / (peak_tflops * 1e12 * UTILIZATION) / 3600
  return {"tokens": tokens, "flops": flops, "chip_hours": hours, "dollars": hours * price}


def cost_cells(numbers):
  return [f"{numbers['tokens']:,}", f"{numbers['chip_hours']:.2g}", f"${numbers['dollars']:.2g}"]


COST_COLUMNS = ["tokens", f"{ACCELERATOR.upper()} chip-hours", f"{ACCELERATOR.upper()} $"]
COST_NOTE = (f"Cost: tokens trained on (steps x batch x row, prompts included) or scored; chip-hours and dollars of "
             f"their FLOPs (6N per token for full fine-tuning, 4N for LoRA, 2N for scoring; N the model's parameters) "
             f"on one {ACCELERATOR.upper()} at {UTILIZATION:.0%} of its {ACCELERATORS[ACCELERATOR][0]:g} TFLOP/s, "
             f"${ACCELERATORS[ACCELERATOR][2]:.2f} per chip-hour (the dry run's table); evaluations not counted.")


def parameter_count(gguf_path):
  from jaxtrain.lm import gguf  # pylint: disable=import-outside-toplevel  (it imports jax)
  f = gguf.File(gguf_path)
  return sum(math.prod(f.shape(name)) for name in f.tensors)


# ---- The shared data and commands ----------------------------------------------------------


def write_mailbox(path, threads):
  """make_mailbox's mailbox of `threads` threads at `path`, rewritten only when it changes (its data caches keep)."""
  make_mailbox.write(path + ".new", threads=threads)
  with open(path + ".new", "rb") as new:
    content = new.read()
  if os.path.exists(path):
    with open(path, "rb") as old:
      if old.read() == content:
        os.remove(path + ".new")
        return path
  os.replace(path + ".new", path)
  return path


def shared_data(root):
  """The files lessons 5-8 share, in ROOT/data: the two mailboxes, the prose and the task."""
  directory = os.path.join(root, "data")
  os.makedirs(directory, exist_ok=True)
  return {"mail": write_mailbox(os.path.join(directory, f"mail_{THREADS}.mbox"), THREADS),
          "small_mail": write_mailbox(os.path.join(directory, f"mail_{SMALL_THREADS}.mbox"), SMALL_THREADS),
          "replay": write_jsonl(os.path.join(directory, "replay.jsonl"), prose_documents(REPLAY_FILES)),
          "heldout_prose": write_jsonl(os.path.join(directory, "heldout_prose.jsonl"),
                                       prose_documents(HELDOUT_PROSE_FILES)),
          "task": write_task(os.path.join(directory, "task"))}


class Setup:
  """What the lessons' commands share: the model, the data, the budget."""

  def __init__(self, root, model, quick, limit):
    self.root, self.model, self.quick = root, os.path.abspath(model), quick
    self.limit = limit or (QUICK_LIMIT if quick else LIMIT)
    self.data = shared_data(root)
    self.parameters = parameter_count(self.model)
    module = assistant()
    config = module.get_config(self.data["mail"])
    self.lr = module.LR
    self.batch, self.seq_len = ((QUICK_BATCH, QUICK_SEQ_LEN) if quick else
                                (config.input.batch_size, config.input.data.seq_len))
    self.steps = QUICK_STEPS if quick else STEPS

  def train(self, workdir, method, *overrides, mail="mail", evaluators=True, budget=None, mode=None):
    """The launch command of METHOD on a mailbox; `budget` (flags) defaults to self.steps steps."""
    files = [self.data[mail]] + ([self.data[k] for k in ("replay", "heldout_prose", "task")] if evaluators else [])
    if budget is None:
      budget = ["--config.total_epochs=0", f"--config.total_steps={self.steps}"]
    # An epoch of short quick steps is many steps: its tenth, the warmup, would outlast them.
    quick = [f"--config.input.data.seq_len={self.seq_len}", f"--config.input.batch_size={self.batch}",
             "--config.schedule.warmup_epochs=0"]
    return launch(f"{THIS}:{method}:{':'.join(files)}", workdir, f"--config.init_from.gguf={self.model}",
                  *(quick if self.quick else []), *budget,
                  *([f"--config.evals.zeroshot.limit={self.limit}"] if evaluators else []), *overrides, mode=mode)

  def lora_default(self):
    """Lesson 5's well-chosen run, which is lesson 7's LoRA run: (workdir, command)."""
    workdir = os.path.join(self.root, "5_learning_rate", "lr_default")
    return workdir, self.train(workdir, "lora", f"--config.optimizer.lr={self.lr:g}")

  def cost(self, workdir, kind):
    rows = read_rows(workdir)
    steps = max((r["step"] for r in rows if "train/loss" in r), default=0)
    return cost(self.parameters, steps * self.batch * self.seq_len, kind)

  def budget_words(self):
    return f"{self.steps} steps of batch {self.batch} x {self.seq_len} tokens"


def last(rows, key, default=None):
  found = series(rows, key)
  return found[-1][1] if found else default


def _wall(seconds, error=None):
  return f"{seconds:.0f} s" + (f" ({error})" if error else "")


# ---- The lessons --------------------------------------------------------------------------
# Each returns {'title', 'columns', 'rows', 'notes', 'runs'}, as lessons.py's do.


def lesson_5(run, setup):
  """LoRA at three rates, and lr_find's suggestion."""
  out = os.path.join(setup.root, "5_learning_rate")
  runs, table = {}, []
  for label, lr in RATES:
    if lr is None:
      lr = setup.lr
      workdir, command = setup.lora_default()
    else:  # Without lesson 7's evaluators, which cost a minute or two at the end.
      workdir = os.path.join(out, f"lr_{lr:g}")
      command = setup.train(workdir, "lora", f"--config.optimizer.lr={lr:g}", evaluators=False)
    seconds, error = run(workdir, command, allow_failure=True)  # Too high may end in a non-finite loss.
    rows = read_rows(workdir)
    train, val = series(rows, "train/loss"), series(rows, "val/loss")
    numbers = setup.cost(workdir, "lora")
    runs[label] = {"lr": lr, "train_loss": train, "val_loss": val, "seconds": seconds, "error": error, **numbers}
    table.append([label, f"{lr:g}", _f(train[0][1]) if train else "-", _f(train[-1][1]) if train else "-",
                  _f(val[0][1]) if val else "-", _f(val[-1][1]) if val else "-", _wall(seconds, error),
                  *cost_cells(numbers)])
  workdir = os.path.join(out, "lr_find")
  low, high, steps = LR_FIND
  flags = [f"--lr_find_out={workdir}.png", f"--lr_find_min={low:g}", f"--lr_find_max={high:g}",
           f"--lr_find_steps={steps}"]
  seconds, error = run(workdir, setup.train(workdir, "lora", *flags, evaluators=False, budget=[], mode="lr_find"),
                       allow_failure=True)
  found = read_lr_find(workdir + ".log")
  numbers = cost(setup.parameters, (found["curve"][-1][0] if found["curve"] else 0) * setup.batch * setup.seq_len,
                 "lora")
  runs["lr_find"] = {**found, "seconds": seconds, "error": error, **numbers}
  suggested = (f"suggests {found['suggested']:.1e} ({found['suggested'] / setup.lr:.2g} x {setup.lr:g})"
               if found["suggested"] else "no suggestion")
  table.append([f"lr_find ({steps} steps)", f"{low:g} -> {high:g}: {suggested}", "-", "-", "-", "-",
                _wall(seconds, error), *cost_cells(numbers)])
  fastai = (f"lowest smoothed loss / 10 (fastai's rule): {found['min_over_10']:.1e}" if found["min_over_10"]
            else "no rate from it")
  notes = (f"LoRA (the assistant's: rank 8, alpha 16, dropout 0.05 on every attention and MLP projection, the base "
           f"frozen) on SmolLM2-135M-Instruct ({setup.parameters:,} parameters), {setup.budget_words()} on "
           f"make_mailbox's {THREADS} threads ({MAIL_VALIDATION_FRACTION:.0%} of the replies held out), adamw with "
           "the assistant's cosine schedule. Losses in nats per scored token (the replies only); train loss per "
           "step, held-out every half epoch and at the end. The well-chosen run is lesson 7's LoRA run: its wall "
           "also holds lesson 7's evaluations at the end (general prose, zero-shot). lr_find: `--mode=lr_find "
           f"--lr_find_min={low:g} --lr_find_max={high:g} --lr_find_steps={steps}` on the same config "
           f"({found['stop'] or 'no stop line'}); {fastai}; its smoothing (an average with beta 0.98, made for ~100 "
           "steps) weighs nearly all of so few points alike. " + COST_NOTE)
  return {"title": "Lesson 5: the learning rate (SmolLM2, LoRA on a mailbox)",
          "columns": ["run", "optimizer.lr", "train loss, step 1", "train loss, final", "held-out loss, first",
                      "held-out loss, final", "wall", *COST_COLUMNS],
          "rows": table, "notes": notes, "runs": runs}


def read_lr_find(log_path):
  """lr_find's printed table ([(step, lr, loss, smoothed)]), its stop and its two rates, from its output (the
  last run's: a log holds every run of its command)."""
  text = ""
  if os.path.exists(log_path):
    with open(log_path, encoding="utf-8") as f:
      text = f.read()
    text = text[max(text.rfind("lr_find: up to "), 0):]
  curve = [(int(s), float(lr), float(loss), float(smooth)) for s, lr, loss, smooth in
           re.findall(r"^ *(\d+) +(\d\.\d\de[-+]\d+) +(\S+) +(\S+)$", text, re.M)]
  suggested = re.findall(r"Suggested learning rate: (\S+) ", text)
  lowest = re.findall(r"Lowest smoothed loss / 10: ([^ ;]+)", text)
  stop = re.findall(r"^Stopped: (.*)\.$", text, re.M)
  return {"curve": curve, "suggested": float(suggested[-1]) if suggested else None,
          "min_over_10": float(lowest[-1]) if lowest else None, "stop": f"stopped: {stop[-1]}" if stop else None}


def lesson_6(run, setup):
  """A small mailbox for many epochs: plain, LoRA dropout, early stopping."""
  out = os.path.join(setup.root, "6_overfitting")
  budget = (["--config.total_epochs=0", "--config.total_steps=4", "--config.evals.val.every_epochs=0",
             "--config.evals.val.every_steps=2"] if setup.quick else
            [f"--config.total_epochs={OVERFIT_EPOCHS}", "--config.evals.val.every_epochs=1"])
  variants = (("plain", "plain", "lora", 0.0),
              (f"LoRA dropout {OVERFIT_DROPOUT:g}", "dropout", "lora", OVERFIT_DROPOUT),
              ("early stopping", "early_stopping", "lora_early_stopping", 0.0))
  runs, table = {}, []
  for label, directory, method, dropout in variants:
    workdir = os.path.join(out, directory)
    seconds, _ = run(workdir, setup.train(workdir, method, f"--config.optimizer.lr={OVERFIT_LR:g}",
                                          f"--config.lora.dropout={dropout:g}", mail="small_mail", evaluators=False,
                                          budget=budget))
    rows = read_rows(workdir)
    train, val = series(rows, "train/loss"), series(rows, "val/loss")
    epoch = dict(series(rows, "train/epoch"))
    best_step, best = min(val, key=lambda sv: sv[1])
    steps = max(epoch)
    numbers = setup.cost(workdir, "lora")
    runs[label] = {"train_loss": train, "val_loss": val, "epochs": sorted(epoch.items()), "best_val_loss": best,
                   "best_step": best_step, "final_val_loss": val[-1][1], "final_train_loss": train[-1][1],
                   "steps": steps, "seconds": seconds, **numbers}
    table.append([label, f"{_f(best)} (epoch {epoch[best_step]:.3g})", _f(val[-1][1]), _f(train[-1][1]),
                  _f(val[-1][1] - train[-1][1]), f"{epoch[steps]:.3g} / {steps}", _wall(seconds), *cost_cells(numbers)])
  schedule = ("4 steps, held-out every 2 steps" if setup.quick else
              f"{OVERFIT_EPOCHS} epochs, held-out every epoch")
  notes = (f"LoRA at lr {OVERFIT_LR:g} (three times the assistant's, so that the small mailbox is learnt by heart "
           f"within the budget) on make_mailbox's {SMALL_THREADS} threads ({MAIL_VALIDATION_FRACTION:.0%} of the "
           f"replies held out), batch {setup.batch} x {setup.seq_len} tokens, {schedule}. Train loss: the step's "
           "batch. Dropout: config.lora.dropout (on the adapters' input; the plain run has none); early stopping: the "
           "assistant's (val/loss, patience 2 evaluations, min_delta 0; the best checkpoint kept). " + COST_NOTE)
  return {"title": "Lesson 6: overfitting a small mailbox, LoRA dropout and early stopping",
          "columns": ["run", "best held-out loss", "final held-out loss", "final train loss", "gap (final)",
                      "epochs / steps trained", "wall", *COST_COLUMNS],
          "rows": table, "notes": notes, "runs": runs}


def lesson_7(run, setup):
  """General ability before and after the mail fine-tune, four ways."""
  out = os.path.join(setup.root, "7_forgetting")
  before = os.path.join(out, "before")
  seconds, _ = run(before, setup.train(before, "lora", "--config.optimizer.lr=0.0", "--config.schedule.warmup_epochs=0",
                                       budget=["--config.total_epochs=0", "--config.total_steps=1"]))
  b = {**_general(read_rows(before)), "seconds": seconds}
  runs = {"before": b}
  table = [["before (the base model)", "-", _f(b["mail_loss"]), _f(b["prose_loss"]), "", _f(b["prose_bpb"]), _acc(b),
            _wall(seconds), "-", "-", "-"]]
  methods = ((f"full, lr {FULL_HIGH:g}", "full_high", "full", FULL_HIGH),
             (f"full, lr {FULL_LOW:g}", "full_low", "full", FULL_LOW),
             (f"full, lr {FULL_HIGH:g}, {REPLAY:.0%} prose replayed", "full_mix", "full_mix", FULL_HIGH),
             (f"LoRA r=8, lr {setup.lr:g} (lesson 5's)", None, "lora", setup.lr))
  for label, directory, method, lr in methods:
    if directory is None:
      workdir, command = setup.lora_default()
      reused = os.path.exists(workdir + ".done")
      seconds, _ = run(workdir, command)
      if reused:  # Lesson 5's run: its time counts there.
        run.seconds -= seconds
    else:
      workdir = os.path.join(out, directory)
      seconds, _ = run(workdir, setup.train(workdir, method, f"--config.optimizer.lr={lr:g}"))
    rows = read_rows(workdir)
    numbers = setup.cost(workdir, "lora" if method == "lora" else "full")
    trainable, after = _trainable(workdir + ".log"), _general(rows)
    runs[label] = {**after, "prose_increase": after["prose_loss"] - b["prose_loss"], "trainable": trainable,
                   "val_curve": series(rows, "val/loss"), "train_loss": series(rows, "train/loss"),
                   "seconds": seconds, **numbers}
    table.append([label, f"{trainable:,}" if trainable else "?", _f(after["mail_loss"]), _f(after["prose_loss"]),
                  f"{after['prose_loss'] - b['prose_loss']:+.3f}", _f(after["prose_bpb"]), _acc(after), _wall(seconds),
                  *cost_cells(numbers)])
  notes = (f"Each method from SmolLM2-135M-Instruct, {setup.budget_words()} on make_mailbox's {THREADS} threads, "
           "adamw (no weight decay) with the assistant's cosine schedule. Mail: the held-out replies' loss (nats per "
           "token). Prose: the loss and bits per byte of English prose that ships with Python, "
           f"{' and '.join(HELDOUT_PROSE_FILES)} (scripts/stdlib_prose.py; {b['prose_tokens']:,} tokens), which no run "
           f"trains on. Zero-shot: lesson 8's which_function at 0 shots, the first {setup.limit} "
           "documents (chance 0.25, ± the standard error), scored at the end of each run by the `multiple_choice` "
           "evaluator, lm_eval's harness. Replay: input.data.mixture with weights "
           f"{1 - REPLAY:g} (mail) and {REPLAY:g} (the other prose files: {', '.join(REPLAY_FILES[:3])}, ...; a "
           "replayed row is scored on all its tokens, a mail row on its reply alone, about a fifth, so the prose is "
           "over half of the scored tokens). "
           "Before: one step at lr 0, which changes no weight. The LoRA row is lesson 5's well-chosen run. "
           + COST_NOTE)
  return {"title": "Lesson 7: catastrophic forgetting (SmolLM2 fine-tuned on mail)",
          "columns": ["method", "trainable parameters", "mail held-out loss", "prose loss", "change",
                      "prose bits/byte", "zero-shot acc", "wall", *COST_COLUMNS],
          "rows": table, "notes": notes, "runs": runs}


def _general(rows):
  return {"mail_loss": last(rows, "val/loss", math.nan), "prose_loss": last(rows, "prose/loss", math.nan),
          "prose_bpb": last(rows, "prose/bits_per_byte", math.nan), "prose_tokens": last(rows, "prose/num_tokens", 0),
          "zeroshot_acc": last(rows, "zeroshot/acc", math.nan), "zeroshot_stderr": last(rows, "zeroshot/acc_stderr", 0),
          "zeroshot_n": last(rows, "zeroshot/n", 0)}


def _acc(r):
  return f"{r['zeroshot_acc']:.3f} ± {r['zeroshot_stderr']:.3f}"


def lesson_8(run, setup, shots):
  """k-shot accuracy of the base model on which_function."""
  out = os.path.join(setup.root, "8_fewshot")
  task = setup.data["task"]
  runs, table = {}, []
  for k in shots:
    workdir = os.path.join(out, f"{k}shot")
    seconds, _ = run(workdir, ["-m", "jaxtrain.lm_eval", f"--model={setup.model}", f"--tasks={task}",
                               f"--num_fewshot={k}", f"--limit={setup.limit}", f"--output_path={workdir}"])
    with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
      result = json.load(f)["results"][TASK]
    numbers = cost(setup.parameters, scored_tokens(setup.model, task, k, setup.limit), "scoring")
    runs[str(k)] = {**result, "seconds": seconds, **numbers}
    table.append([str(k), f"{result['acc']:.3f} ± {result['acc_stderr']:.3f}",
                  f"{result['acc_norm']:.3f} ± {result['acc_norm_stderr']:.3f}", str(result["n"]), "0.25",
                  _wall(seconds), *cost_cells(numbers)])
  sizes = []
  for name in (f"{TASK}.jsonl", f"{TASK}_fewshot.jsonl"):
    with open(os.path.join(os.path.dirname(task), name), encoding="utf-8") as f:
      sizes.append(sum(1 for _ in f))
  notes = (f"`python -m jaxtrain.lm_eval --model=GGUF --tasks={TASK}.json --num_fewshot=K --limit={setup.limit}` on "
           "SmolLM2-135M-Instruct. which_function (scripts/make_which_function_task.py) is built from the .py files of "
           f"Python {sys.version.split()[0]}'s standard library, which ship with Python: {sizes[0]} documents and "
           f"{sizes[1]} few-shot documents from other modules, each the first sentence of a public function's "
           "docstring and 4 names to choose from (the function's and 3 of other modules'): chance is 0.25. Few-shot "
           "examples: the harness's draws (seed 1234) from the few-shot file. ± is the standard error; wall includes "
           f"loading the model and compiling. {fewshot_verdict(runs)} " + COST_NOTE)
  return {"title": "Lesson 8: zero-, one- and few-shot (SmolLM2 on which_function)",
          "columns": ["k", "acc", "acc_norm", "n", "chance", "wall", *COST_COLUMNS],
          "rows": table, "notes": notes, "runs": runs}


def fewshot_verdict(runs):
  """Whether the fewest shots score above chance, and whether the most shots help, by twice the stderr."""
  ks = sorted(runs, key=int)
  first, most = runs[ks[0]], runs[ks[-1]]
  above = first["acc"] - 0.25 > 2 * first["acc_stderr"]
  words = [f"At {ks[0]} shots the accuracy is "
           + ("above chance by more than twice its stderr." if above else "not clearly above chance.")]
  for metric in ("acc", "acc_norm") if len(ks) > 1 else ():  # They can disagree: both are lm-eval's.
    diff = most[metric] - first[metric]
    margin = 2 * math.hypot(first[f"{metric}_stderr"], most[f"{metric}_stderr"])
    verdict = "help" if diff > margin else "hurt" if diff < -margin else "make no difference beyond the noise"
    words.append(f"{metric}, {ks[-1]} shots against {ks[0]}: {diff:+.3f}, twice the combined stderr {margin:.3f}: "
                 f"they {verdict}.")
  return " ".join(words) + (" (The same documents: a paired test would be tighter.)" if len(ks) > 1 else "")


def scored_tokens(model, task_path, num_fewshot, limit):
  """The tokens lm_eval scores: every (context, choice) pair's, as the harness tokenizes them."""
  from jaxtrain.evals import lm_tasks  # pylint: disable=import-outside-toplevel  (these import jax)
  from jaxtrain.evals.loglikelihood import encode_pairs  # pylint: disable=import-outside-toplevel
  from jaxtrain.lm import gguf, gguf_tokenizer  # pylint: disable=import-outside-toplevel
  tokenizer = gguf_tokenizer.load(gguf.File(model))
  task = lm_tasks.load(task_path)
  contexts = task.contexts(num_fewshot, limit=limit)
  requests = [(c, task.target_delimiter + choice) for c, doc in zip(contexts, task.docs) for choice in doc["choices"]]
  return sum(len(a) + len(b) for a, b in encode_pairs(tokenizer, requests, tokenizer.adds_bos))


def run_lesson(number, run, root, quick, model, shots, limit):
  """Lesson `number` (5-8) in ROOT/<number>_<name>, the shared data in ROOT/data."""
  setup = Setup(root, model, quick, limit)
  if number == 8:
    return lesson_8(run, setup, shots)
  return {5: lesson_5, 6: lesson_6, 7: lesson_7}[number](run, setup)
