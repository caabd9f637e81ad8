"""The email assistant: mbox threads as prompt/completion pairs, init_from.model (the
source's architecture and tokenizer), the experiment end to end on a mailbox the test
writes, and its bad input (an empty mbox, a file that is not one)."""

import json
import mailbox
import os
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from conftest import ROOT, load_experiment, load_script
import chat_dirs
import hf_dirs
from jaxtrain.data import documents
from jaxtrain.data import mail
from jaxtrain.errors import UserError
from jaxtrain.lm import hf as hf_lib
from jaxtrain.lm import language_model as lm_lib
from jaxtrain.lm import sampling
from jaxtrain import train
from jaxtrain.training import build as build_lib
from jaxtrain.training import init_from


def make_mailbox():
  """scripts/make_mailbox.py as a module."""
  return load_script("make_mailbox")


def message(sender, subject, body, message_id, in_reply_to=None, references=None):
  return make_mailbox().message(sender, "me@example.com", subject, body, 1767607200, message_id,  # 5 Jan 2026, 10:00.
                                reply_to=in_reply_to, references=references)


def write_mbox(path, messages):
  make_mailbox().write(str(path), found=messages)
  return str(path)


def thread_messages():
  return [
      message("ann@example.com", "Lunch?", "Free on Friday?\n", "<a@x>"),
      message("me@example.com", "Re: Lunch?", "Yes, noon works.\n\nOn Mon, Ann wrote:\n> Free on Friday?\n",
              "<b@x>", in_reply_to="<a@x>", references="<a@x>"),
      message("ann@example.com", "Re: Lunch?", "Great, see you.\n> Yes, noon works.\n", "<c@x>",
              references="<a@x> <b@x>"),  # References only: its newest entry is the parent.
      message("bo@example.com", "Re: old thread", "Answering something not in this mailbox.\n", "<d@x>",
              in_reply_to="<gone@x>"),
  ]


def test_replies_become_prompt_completion_pairs(tmp_path):
  path = write_mbox(tmp_path / "mail.mbox", thread_messages())
  docs = list(documents.read("mbox_replies", [path]))
  assert [len(d) for d in docs] == [1, 2, 2, 1]
  header = "Date: Mon, 05 Jan 2026 10:00:00 +0000\n\n"
  assert docs[0] == [(f"From: ann@example.com\nTo: me@example.com\nSubject: Lunch?\n{header}Free on Friday?\n", True)]
  prompt, completion = docs[1]
  assert prompt == (f"From: ann@example.com\nTo: me@example.com\nSubject: Lunch?\n{header}Free on Friday?\n\n"
                    f"From: me@example.com\nTo: me@example.com\nSubject: Re: Lunch?\n\n", False)
  assert completion == ("Yes, noon works.\n", True)  # The quote and its "wrote:" line are gone.
  assert docs[2][0][0].startswith("From: me@example.com") and "Yes, noon works." in docs[2][0][0]
  assert docs[2][1] == ("Great, see you.\n", True)
  assert docs[3][0][0].endswith("Answering something not in this mailbox.\n")  # Plain text: its parent is absent.
  # The prompt a user builds to draft a reply is the one training saw.
  parent = mailbox.mbox(path)[0]
  assert mail.reply_prompt(parent, {"From": "me@example.com", "To": "me@example.com", "Subject": "Re: Lunch?",
                                    "Date": "Mon, 05 Jan 2026 10:00:00 +0000"}) == prompt[0]
  assert [len(d) for d in documents.read("mbox_replies", [path], replies_only=True)] == [2, 2]


@pytest.mark.parametrize("content, error", [
    (b"", r"mail.mbox is empty: an mbox mailbox holds at least one message"),
    (b'{"prompt": "hi"}\n', r"mail.mbox is not an mbox mailbox: it starts with '\{\"prompt\": \"hi\"\}', not a "
                            r"'From ' line"),
])
def test_an_empty_or_foreign_file_is_one_line(tmp_path, content, error):
  (tmp_path / "mail.mbox").write_bytes(content)
  with pytest.raises(UserError, match=error):
    mail.check_mbox(str(tmp_path / "mail.mbox"))


def test_the_launcher_refuses_them_before_writing(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  hf = hf_dirs.make(str(tmp_path / "hf"), "gqa_tied")
  for content, words in ((b"\n\n", "is empty"), (b"Subject: hi\n\nno From line\n", "is not an mbox mailbox")):
    (tmp_path / "mail.mbox").write_bytes(content)
    result = subprocess.run(
        [sys.executable, "-m", "jaxtrain.launch", f"--config={ROOT}/experiments/email_assistant.py:{tmp_path}/mail.mbox",
         f"--config.init_from.hf_dir={hf}", f"--config.input.data.data_dir={tmp_path}/data",
         f"--workdir={tmp_path}/run"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and words in lines[0], result.stderr[-2000:]
    assert not os.path.exists(tmp_path / "run") and not os.path.exists(tmp_path / "data")
  result = subprocess.run([sys.executable, "-m", "jaxtrain.launch", f"--config={ROOT}/experiments/email_assistant.py",
                           f"--workdir={tmp_path}/run"], capture_output=True, text=True, env=env, timeout=300)
  assert result.returncode == 2 and "give your mailbox after the file name: --config=experiments/email_assistant.py:" \
      "PATH/TO/mail.mbox" in result.stderr.strip().splitlines()[-1]


def demo_mailbox(path, threads=12):
  """scripts/make_mailbox.py's mailbox of `threads` threads."""
  make_mailbox().write(str(path), threads=threads)
  return str(path)


def assistant_config(mbox, **init_from):
  config = load_experiment("email_assistant").get_config(mbox)
  config.init_from.update(init_from)
  return config


def test_the_assistant_fine_tunes_a_run_with_its_architecture_and_tokenizer(tfds_dir, pretrained, tmp_path):
  mbox = demo_mailbox(tmp_path / "mail.mbox")
  config = assistant_config(mbox, workdir=pretrained)
  assert config.evals.samples.prompts and all(p.endswith("\n\n") for p in config.evals.samples.prompts)
  workdir = str(tmp_path / "run")
  train.run(config, workdir)
  with open(os.path.join(pretrained, "config.json"), encoding="utf-8") as f:
    source = json.load(f)
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    saved = json.load(f)
  expected = {k: v for k, v in source["model"].items() if k != "dropout"}  # The override's name of that rate wins.
  assert saved["model"] == {**expected, "dtype": "float32", "residual_dropout": 0.0, "remat": "none"}
  assert saved["input"]["data"]["tokenizer"] == f"{pretrained}/tokenizer.json"
  with open(os.path.join(workdir, "tokenizer.json"), "rb") as a, open(f"{pretrained}/tokenizer.json", "rb") as b:
    assert a.read() == b.read()
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8")]
  val = [r["val/loss"] for r in rows if "val/loss" in r]
  last = [r for r in rows if "train/epoch" in r][-1]
  steps_per_epoch = last["step"] // 2
  assert len(val) == 4 and val[-1] < val[0]  # Every half epoch, for 2 epochs; it learns.
  assert last["step"] == 2 * steps_per_epoch and last["train/epoch"] == pytest.approx(2.0)
  samples = [json.loads(line) for line in open(os.path.join(workdir, "samples.jsonl"), encoding="utf-8")]
  # Two held-out emails, each cut to the end that fits the context with room for a draft.
  assert len(samples) == 2 * 2 and len({s["prompt"] for s in samples}) == 2
  for s in samples:
    assert any(p.endswith(s["prompt"]) for p in config.evals.samples.prompts) and s["prompt"].endswith("\n\n")
  # Only the adapters trained: the base weights are the pre-trained run's, bit for bit.
  base, tuned = lm_lib.load(pretrained), lm_lib.load(workdir)
  spec, adapters = tuned.lora
  flat = lambda tree: {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}
  tuned_params, base_params = flat(adapters), flat(base.variables["params"])
  assert sorted(n for n in tuned_params if "lora" not in n) == sorted(base_params)
  for name, value in base_params.items():
    np.testing.assert_array_equal(tuned_params[name], value, err_msg=name)
  lora_b = [value for name, value in tuned_params.items() if "lora_B" in name]
  assert len(lora_b) == 7 * 2 and all(np.abs(b).max() > 0 for b in lora_b)  # 7 projections x 2 layers trained.

  # Resuming reads the run's own config.json and tokenizer: the source may be gone.
  moved = pretrained + "_moved"
  shutil.move(pretrained, moved)
  try:
    config = assistant_config(mbox, workdir=pretrained)
    config.total_epochs = 3.0
    train.run(config, workdir)
  finally:
    shutil.move(moved, pretrained)
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8")]
  assert [r for r in rows if "train/epoch" in r][-1]["step"] == 3 * steps_per_epoch


def test_a_hugging_face_source_gives_its_config_and_tokenizer(tfds_dir, tmp_path):
  hf = hf_dirs.make(str(tmp_path / "hf"), "gqa_tied")
  mbox = write_mbox(tmp_path / "mail.mbox", thread_messages() * 3)
  config = assistant_config(mbox, hf_dir=hf)
  config.input.data.validation_fraction = 0.0
  config.input.data.seq_len = 32
  config.evals = ml_collections.ConfigDict()  # Nothing held out here.
  del config["early_stopping"]
  exp = build_lib.build(config)
  _, kwargs, _ = hf_lib.read_config(hf)
  assert exp.config.model.to_dict() == dict(name="llama", dtype="float32", residual_dropout=0.0, scan_layers=True,
                                            remat="none", **{k: v for k, v in kwargs.items() if v is not None})
  assert exp.config.input.data.tokenizer == hf and exp.data.source.tokenizer.path.startswith(hf)
  assert config.input.data.tokenizer is None  # The caller's config is left as it was.


def test_init_from_model_needs_a_source(tfds_dir, tmp_path):
  mbox = write_mbox(tmp_path / "mail.mbox", thread_messages())
  with pytest.raises(UserError, match=r"config key 'init_from' needs one of workdir= \(a jaxtrain run\), hf_dir="):
    init_from.resolve_model(assistant_config(mbox))
  with pytest.raises(UserError, match=r"init_from.workdir=.*nowhere has no config.json; give the work directory"):
    init_from.resolve_model(assistant_config(mbox, workdir=str(tmp_path / "nowhere")))
  with pytest.raises(UserError, match=r"init_from.hf_dir=.*nowhere is not a directory"):
    init_from.resolve_model(assistant_config(mbox, hf_dir=str(tmp_path / "nowhere")))
  classifier = tmp_path / "digits_run"
  classifier.mkdir()
  (classifier / "config.json").write_text(json.dumps({"model": {"name": "cnn"}, "input": {"data": {"name": "digits"}}}))
  with pytest.raises(UserError, match=r"init_from.model: .*digits_run has no tokenizer \(a run of model 'cnn'\), and "
                                      r"this config trains a language model on text; start from a language model's"):
    init_from.resolve_model(assistant_config(mbox, workdir=str(classifier)))


# ChatML with a default system prompt of its own, as SmolLM2-Instruct's template has.
TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
            "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
            "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
NEW = 12


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
  """hf_dirs' 'gqa_tied' Llama with a ChatML tokenizer and template: an instruct model."""
  directory = hf_dirs.make(str(tmp_path_factory.mktemp("chat") / "hf"), "gqa_tied", seed=3, std=0.7)
  chat_dirs.chat_tokenizer(directory, TEMPLATE, chat_dirs.CHATML_TOKENS, bos=None, eos="<|im_end|>")
  return directory


def generate(*args):
  done = subprocess.run([sys.executable, "-m", "jaxtrain.generate", *args], capture_output=True, text=True,
                        timeout=300, cwd=ROOT)
  return done.returncode, done.stdout, done.stderr


def as_read(text):
  return text.replace("\r\n", "\n").replace("\r", "\n")  # What text-mode pipes make of it.


def test_with_a_chat_template_replies_are_conversations_and_generate_drafts_from_the_same_prompt(
    tfds_dir, chat_model, tmp_path):
  mbox = demo_mailbox(tmp_path / "mail.mbox")
  config = assistant_config(mbox, hf_dir=chat_model)
  config.total_epochs = 1.0
  workdir = str(tmp_path / "run")
  train.run(config, workdir)
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["input"]["data"]["replies_only"] is True
  # The drafts during training are prompted as the replies were trained: rendered conversations.
  samples = [json.loads(line) for line in open(os.path.join(workdir, "samples.jsonl"), encoding="utf-8")]
  assert samples and all(s["prompt"].startswith("<|im_start|>system\nYou are Sam Lee's email assistant. Write Sam "
                                                "Lee's reply to the email below, as Sam Lee writes.<|im_end|>\n"
                                                "<|im_start|>user\nFrom: ") for s in samples)
  assert all(s["prompt"].endswith("<|im_end|>\n<|im_start|>assistant\n") for s in samples)

  # generate --reply_to: the draft LM.reply makes, from training's prompt, for each email.
  unseen = make_mailbox().unseen(str(tmp_path / "unseen"), count=2)
  lm = lm_lib.load(workdir)
  emails = [mail.read_email(path) for path in unseen]
  drafts = lm.reply(emails, max_new_tokens=NEW)
  assert drafts == lm.chat([mail.reply_messages(e, mail.reply_headers(e)) for e in emails], max_new_tokens=NEW)
  code, out, err = generate(f"--model={workdir}", *(f"--reply_to={p}" for p in unseen), f"--max_new_tokens={NEW}")
  assert code == 0, err[-2000:]
  assert out == as_read("".join(f"--- {i} ---\n{mail.message_text(e)}\n--- reply ---\n{d}\n"
                                for i, (e, d) in enumerate(zip(emails, drafts), 1)))
  # An email of the mailbox, by its Message-ID.
  first = next(m for m in mail.mbox_messages(mbox) if m["From"] != make_mailbox().ME)
  code, out, err = generate(f"--model={workdir}", f"--reply_to={mbox}", f"--message_id={first['Message-ID']}",
                            f"--max_new_tokens={NEW}")
  assert code == 0 and out.endswith(as_read(f"--- reply ---\n{lm.reply(first, max_new_tokens=NEW)}\n")), err[-2000:]
  # A run that trained without the template drafts without it.
  headers = mail.reply_headers(emails[0])
  lm.chat_replies = False
  assert lm.reply(emails[0], max_new_tokens=NEW) == lm.generate(mail.reply_prompt(emails[0], headers),
                                                                max_new_tokens=NEW)
  # An email too long for the context (128 tokens here) is cut at its end; the headers stay.
  small = lm_lib.load(chat_model)
  small.chat_replies = False
  whole = mail.message_text(emails[0])
  cut = sampling.fit_text(small.tokenizer, lambda t: mail.reply_prompt(emails[0], headers, t), whole, 128 - NEW)
  assert cut.endswith("\n[...]\n") and whole.startswith(cut[:-len("[...]\n")].rstrip("\n")) and len(cut) > 20
  prompt = mail.reply_prompt(emails[0], headers, cut)
  assert len(small.tokenizer.encode(prompt)) <= 128 - NEW < len(small.tokenizer.encode(prompt + whole[len(cut):][:8]))
  assert small.reply(emails[0], max_new_tokens=NEW) == small.generate(prompt, max_new_tokens=NEW)


@pytest.mark.parametrize("args, line", [
    (("--prompt=hi",), "error: --reply_to drafts from the email assistant's own prompt; leave out --prompt, "
                       "--prompts_file, --chat and --system"),
    (("--message_id=<a@x>", "--reply_to=/elsewhere/b.mbox"), "error: --message_id picks messages of one mbox: give "
                                                             "exactly one --reply_to=MBOX with it, not 2"),
])
def test_generate_reply_to_mistakes_are_one_line_before_the_model_loads(tmp_path, args, line):
  eml = tmp_path / "ask.eml"
  eml.write_bytes(thread_messages()[0].as_bytes())
  code, _, err = generate(f"--model={tmp_path}/no_model", f"--reply_to={eml}", *args)
  assert code == 2 and err.strip().splitlines() == [line]


def test_the_textbooks_requests_and_emails_train_through_the_chat_template(tfds_dir, chat_model, tmp_path):
  records = [{"input": f"Ask {name} to {verb} our {day} meeting",
              "output": f"Subject: Our {day} meeting\n\nHi {name},\n\ncould we {verb} it?\n\nBest,\nSam\n"}
             for name in ("Ann", "Bo", "Cy", "Di") for day in ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
             for verb in ("move", "cancel")]
  path = tmp_path / "requests.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
  config = assistant_config(str(path), hf_dir=chat_model)
  assert config.input.data.format == "prompt_completion" and "replies_only" not in config.input.data
  held_out = [r["input"] for r in records if documents.in_split([(r["input"], False), (r["output"], True)],
                                                                  "validation", 0.1)]
  assert held_out and config.evals.samples.conversations == tuple((("user", p),) for p in sorted(held_out, key=len)[:2])
  exp = build_lib.build(config)
  tok = exp.data.source.tokenizer
  rows = exp.data.source.read(np.arange(len(exp.data.source)))
  weighted = tok.decode(rows["targets"][rows["weights"] > 0].tolist())
  train = [r for r in records if r["input"] not in held_out]
  assert weighted == "".join(r["output"] + "\n" for r in train)  # Each email and its end of turn, nothing else.
