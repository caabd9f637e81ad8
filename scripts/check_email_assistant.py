"""The email assistant, end to end on a real model, as a user runs it: does the fine-tuned
SmolLM2 write the owner's mail where the base model does not?

    python scripts/check_email_assistant.py --model="$(python scripts/fetch_model.py smollm2-135m-instruct)" \
        [--threads=60] [--out=runs/check_email] [--config.KEY=VALUE ...]

1. `scripts/make_mailbox.py --threads=N --unseen=OUT/unseen`: a mailbox where Sam Lee always
   answers "Hi <first name>," ... "Best,\\nSam", and 8 emails to Sam that are not in it
   (--mailbox_module=tests/e2e/lab_mailbox.py: another owner and style, written differently).
2. `python -m jaxtrain.generate --model=GGUF --reply_to=...` (the 8 emails): the base model's drafts.
3. `python -m jaxtrain.launch --config=experiments/email_assistant.py:MAILBOX
   --config.init_from.gguf=GGUF --workdir=OUT/run`, timed (extra --config.* flags pass through).
4. The same `generate --reply_to` with `--model=OUT/run`: the fine-tuned drafts.
5. The held-out replies' loss (the run's `val` split: the loss on the replies' tokens
   alone) for the base model and the fine-tuned one, computed here the same way for both.

Prints a table (drafts with the owner's greeting, with the sign-off, with both; the
held-out loss; wall times) and writes OUT/check.json and OUT/drafts.jsonl (every draft,
before and after). A finished step is not run again (delete OUT to start afresh).
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRAFT_TOKENS = 96


def mailbox_module(path):
  """The mailbox writer at `path`: write(), unseen(), first_name(), OWNER_GREETING, OWNER_SIGNOFF."""
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def timed(command, log):
  """Runs `python command...` in the repository, its output to `log`; returns the seconds."""
  print("$ python " + " ".join(command), flush=True)
  start = time.perf_counter()
  with open(log, "w", encoding="utf-8") as f:
    done = subprocess.run([sys.executable, *command], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=False)
  seconds = time.perf_counter() - start
  if done.returncode:
    with open(log, encoding="utf-8") as f:
      print(f.read()[-3000:], file=sys.stderr)
    raise SystemExit(f"failed after {seconds:.0f} s; the output is in {log}")
  print(f"  ({seconds:.0f} s)", flush=True)
  return seconds


def drafts(model, emails, out_jsonl, log):
  """The drafts of `generate --reply_to` for `emails` (cached in out_jsonl); seconds spent."""
  seconds = 0.0
  if not os.path.exists(out_jsonl):
    seconds = timed(["-m", "jaxtrain.generate", f"--model={model}", *(f"--reply_to={e}" for e in emails),
                     f"--max_new_tokens={DRAFT_TOKENS}", f"--output={out_jsonl}"], log)
  with open(out_jsonl, encoding="utf-8") as f:
    return [json.loads(line)["completion"] for line in f], seconds


def style(mb, draft, first):
  """(greets as the owner does, signs off as the owner does) for one draft."""
  text = draft.strip()
  return text.startswith(mb.OWNER_GREETING.format(first=first)), text.endswith(mb.OWNER_SIGNOFF)


def held_out_loss(model_path, run):
  """The mean loss per scored token of the run's validation split, for the model at
  `model_path`: the replies' tokens only, as the run's `val` evaluator weights them."""
  sys.path.insert(0, ROOT)
  import jax  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jaxtrain import config as config_lib  # pylint: disable=import-outside-toplevel
  from jaxtrain import data  # pylint: disable=import-outside-toplevel
  from jaxtrain.lm import language_model  # pylint: disable=import-outside-toplevel
  with open(os.path.join(run, "config.json"), encoding="utf-8") as f:
    section = json.load(f)["input"]["data"]
  section = dict(section, split="validation", tokenizer=language_model.run_tokenizer(
      run, config_lib.Reader(ml_collections.ConfigDict(section))).path)
  source = data.open_from_config(config_lib.Reader(ml_collections.ConfigDict({"d": section})).d)
  rows = source.read(np.arange(len(source)))
  lm = language_model.load(model_path)
  # Packed rows hold several documents: each attends within its own, as in training.
  logits, _ = jax.jit(lambda v, r: lm.module.apply(v, r["inputs"], train=False, segment_ids=r["segment_ids"],
                                                    positions=r["positions"]))(lm.variables, rows)
  logits = np.asarray(logits, np.float64)
  logits -= logits.max(-1, keepdims=True)
  logp = np.take_along_axis(logits, rows["targets"][..., None], -1)[..., 0] - np.log(np.exp(logits).sum(-1))
  weights = rows["weights"]
  return float(-(logp * weights).sum() / weights.sum()), int(weights.sum())


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  parser.add_argument("--model", required=True, help="The base model: a GGUF file (or a Hugging Face directory).")
  parser.add_argument("--threads", type=int, default=60, help="Threads of the mailbox.")
  parser.add_argument("--out", default=os.path.join("runs", "check_email"))
  parser.add_argument("--mailbox_module", default=os.path.join(ROOT, "scripts", "make_mailbox.py"),
                      help="What writes the mailbox and the unseen emails (tests/e2e/lab_mailbox.py: another owner "
                           "and style, written differently).")
  args, overrides = parser.parse_known_args()
  if not all(o.startswith("--config.") for o in overrides):
    parser.error(f"unknown arguments {overrides}: only --config.KEY=VALUE flags pass through to the training")
  out = os.path.abspath(args.out)
  os.makedirs(out, exist_ok=True)
  mb = mailbox_module(args.mailbox_module)
  mailbox_path = os.path.join(out, f"mail{args.threads}.mbox")
  mb.write(mailbox_path, threads=args.threads)
  emails = mb.unseen(os.path.join(out, "unseen"), count=8, threads=args.threads)
  import email  # pylint: disable=import-outside-toplevel
  import email.policy  # pylint: disable=import-outside-toplevel
  firsts = []
  for path in emails:
    with open(path, "rb") as f:
      firsts.append(mb.first_name(str(email.message_from_binary_file(f, policy=email.policy.default)["From"])))

  init = "hf_dir" if os.path.isdir(args.model) else "gguf"
  base, base_s = drafts(os.path.abspath(args.model), emails, os.path.join(out, "drafts_base.jsonl"),
                        os.path.join(out, "generate_base.log"))
  run = os.path.join(out, "run")
  train_s = 0.0
  if not os.path.exists(os.path.join(run, "done.json")):
    train_s = timed(["-m", "jaxtrain.launch", f"--config=experiments/email_assistant.py:{mailbox_path}",
                     f"--config.init_from.{init}={os.path.abspath(args.model)}", f"--workdir={run}", *overrides],
                    os.path.join(out, "train.log"))
    with open(os.path.join(run, "done.json"), "w", encoding="utf-8") as f:
      json.dump({"train_s": train_s, "overrides": overrides}, f)
  with open(os.path.join(run, "done.json"), encoding="utf-8") as f:
    train_s = json.load(f)["train_s"]
  tuned, tuned_s = drafts(run, emails, os.path.join(out, "drafts_tuned.jsonl"), os.path.join(out, "generate_tuned.log"))

  losses = {name: held_out_loss(path, run) for name, path in (("base", os.path.abspath(args.model)), ("tuned", run))}
  result = {"threads": args.threads, "emails": len(emails), "train_s": train_s, "draft_s": [base_s, tuned_s]}
  lines = ["| model | greeting | sign-off | both | held-out loss (tokens) |", "|---|---|---|---|---|"]
  with open(os.path.join(out, "drafts.jsonl"), "w", encoding="utf-8") as f:
    for name, texts in (("base", base), ("tuned", tuned)):
      marks = [style(mb, t, first) for t, first in zip(texts, firsts)]
      counts = [sum(m[0] for m in marks), sum(m[1] for m in marks), sum(m[0] and m[1] for m in marks)]
      result[name] = {"greeting": counts[0], "signoff": counts[1], "both": counts[2], "held_out_loss": losses[name][0],
                      "held_out_tokens": losses[name][1]}
      lines.append(f"| {name} | {counts[0]}/8 | {counts[1]}/8 | {counts[2]}/8 | {losses[name][0]:.3f} "
                   f"({losses[name][1]}) |")
      for path, text, (greets, signs) in zip(emails, texts, marks):
        f.write(json.dumps({"model": name, "email": os.path.basename(path), "draft": text, "greeting": greets,
                            "signoff": signs}, ensure_ascii=False) + "\n")
  with open(os.path.join(out, "check.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  print("\n".join(lines))
  print(f"Training: {train_s / 60:.1f} min; drafting 8 emails: {base_s:.0f} s (base), {tuned_s:.0f} s (tuned).")
  for name, texts in (("base", base), ("tuned", tuned)):
    print(f"\n--- {name}, {os.path.basename(emails[0])} ---\n{texts[0]}")


if __name__ == "__main__":
  main()
