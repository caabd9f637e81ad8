"""Mail (jaxtrain.data.mail): replies through a chat template (the loss on the reply's own
words, the split the plain pairs have), the headers and prompt of a draft, and reading the
email to answer from an .eml file or an mbox, with its mistakes in one line."""

import json
import os

import numpy as np
import pytest

from jaxtrain.config import Reader, check_all_read
from jaxtrain import data
from jaxtrain.data import mail
from jaxtrain.errors import UserError

import chat_dirs
from conftest import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
with open(os.path.join(ROOT, "tests", "data", "chat_templates.json"), encoding="utf-8") as _f:
  CHATML = json.load(_f)["templates"]["smollm2"]["template"]  # SmolLM2-Instruct's own template.
DATE = 1767607200  # 5 Jan 2026, 10:00 UTC.


MAKE_MAILBOX = load_script("make_mailbox")


def message(sender, to, subject, body, message_id, in_reply_to=None, references=None, cte=None):
  return MAKE_MAILBOX.message(sender, to, subject, body, DATE, message_id, in_reply_to, references, cte)


ANN, SAM = "Ann Park <ann@example.com>", "Sam Lee <sam@example.com>"


def thread():
  return [
      message(ANN, SAM, "Budget", "Hi Sam,\n\nCan we spend 400 € on the offsite café?\n\nThanks,\nAnn\n", "<a@x>",
              cte="quoted-printable"),
      message(SAM, ANN, "Re: Budget", "Hi Ann,\n\nYes, go ahead.\n\nBest,\nSam\n\nOn Mon, Ann Park wrote:\n> Hi Sam,\n",
              "<b@x>", in_reply_to="<a@x>", references="<a@x>"),
      message("IT <it@example.com>", SAM, "Patch day", "Laptops restart tonight.\n", "<c@x>"),
  ]


def write_mbox(path, messages):
  MAKE_MAILBOX.write(str(path), found=messages)
  return str(path)


@pytest.fixture(scope="module")
def chatml_dir(tmp_path_factory):
  return chat_dirs.chatml_tokenizer(tmp_path_factory.mktemp("chatml"), CHATML)


def open_text(**section):
  cfg = Reader({"input": {"data": section}})
  source = data.open_from_config(cfg.input.data)
  check_all_read(cfg)
  return source


def test_a_reply_through_the_template_is_a_conversation_weighted_on_its_own_words(chatml_dir, tmp_path):
  path = write_mbox(tmp_path / "mail.mbox", thread())
  src = open_text(format="mbox_replies", files=path, split="train", validation_fraction=0.0, seq_len=16,
                  tokenizer=chatml_dir, data_dir=str(tmp_path / "cache"))
  tok = src.tokenizer
  rows = src.read(np.arange(len(src)))
  reply = "Hi Ann,\n\nYes, go ahead.\n\nBest,\nSam\n"  # The quote and its "On ... wrote:" line are gone.
  # The messages that answer nothing whole, as plain text (and packing's eos); the reply's
  # own words and its end of turn.
  plain = [tok.encode(mail.message_text(thread()[i])) + [tok.eos_id] for i in (0, 2)]
  expected = plain[0] + tok.encode(reply + "<|im_end|>\n", special_tokens=True) + plain[1]
  assert rows["targets"][rows["weights"] > 0].tolist() == expected
  conversation = tok.decode(src.tokens.tolist())
  assert (
      "system\nYou are Sam Lee's email assistant. Write Sam Lee's reply to the email below, as Sam Lee writes.\n"
      "user\nFrom: Ann Park <ann@example.com>\nTo: Sam Lee <sam@example.com>\nSubject: Budget\n") in conversation
  assert "Can we spend 400 € on the offsite café?" in conversation  # Quoted-printable, decoded.
  # The split is the plain pair's: the same documents with and without the template.
  many = write_mbox(tmp_path / "many.mbox", [m for i in range(12) for m in renumbered(thread(), i)])
  counts = {mode: [open_text(format="mbox_replies", files=many, split=split, validation_fraction=0.5, seq_len=16,
                             tokenizer=chatml_dir, chat_template=mode, data_dir=str(tmp_path / mode)).num_documents
                   for split in ("train", "validation")] for mode in ("auto", "none")}
  assert counts["auto"] == counts["none"] and sum(counts["auto"]) == 36 and 0 < counts["auto"][1] < 36


def renumbered(messages, i):
  """`messages` with their ids and subjects made unique by `i` (distinct documents)."""
  out = []
  for m in messages:
    m.replace_header("Message-ID", m["Message-ID"].replace("@", f"{i}@"))
    m.replace_header("Subject", f"{m['Subject']} {i}")
    for name in ("In-Reply-To", "References"):
      if m[name]:
        m.replace_header(name, m[name].replace("@", f"{i}@"))
    out.append(m)
  return out


def test_a_draft_is_written_as_the_recipient_in_the_training_prompt():
  parent = thread()[0]
  headers = mail.reply_headers(parent)
  assert headers == {"From": SAM, "To": ANN, "Subject": "Re: Budget"}
  assert mail.reply_headers(thread()[1])["Subject"] == "Re: Budget"  # Not "Re: Re:".
  # The draft's prompt is training's: reply_messages of the parent and the reply's headers.
  trained = mail.reply_messages(parent, thread()[1])
  assert mail.reply_messages(parent, headers) == trained
  assert trained[1] == {"role": "user", "content": mail.message_text(parent)}
  assert mail.reply_prompt(parent, headers).endswith("\n\nFrom: Sam Lee <sam@example.com>\nTo: Ann Park "
                                                     "<ann@example.com>\nSubject: Re: Budget\n\n")
  bare = message("ann@example.com", "sam@example.com", "Hi", "Hello\n", "<z@x>")
  assert mail.reply_messages(bare, mail.reply_headers(bare))[0]["content"].startswith(
      "You are sam@example.com's email assistant.")


def test_the_email_to_answer_comes_from_an_eml_file_or_an_mbox(tmp_path):
  eml = tmp_path / "ask.eml"
  eml.write_bytes(thread()[0].as_bytes())
  assert mail.message_text(mail.read_email(str(eml))) == mail.message_text(thread()[0])
  box = write_mbox(tmp_path / "mail.mbox", thread())
  for wanted in ("<c@x>", "c@x"):
    assert mail.read_email(box, wanted)["Subject"] == "Patch day"
  one = write_mbox(tmp_path / "one.eml", thread()[:1])  # Saved with its mbox 'From ' line.
  assert mail.read_email(one)["Subject"] == "Budget"


@pytest.mark.parametrize("name, content, message_id, line", [
    ("gone.eml", None, None, r"--reply_to=.*gone.eml: no such file; give an .eml file, or an mbox with --message_id"),
    ("mail.mbox", "mbox", None, r"--reply_to=.*mail.mbox is an mbox mailbox of 3 messages: say which to answer "
                                r"with --message_id=ID"),
    ("mail.mbox", "mbox", "<nope@x>", r"--reply_to=.*mail.mbox: no message has Message-ID <nope@x>"),
    ("ask.eml", b"From: a@b\nSubject: hi\n\nhello\n", "<a@x>", r"--message_id picks a message of an mbox, but "
                                                                r"--reply_to=.*ask.eml is not one"),
    ("notes.txt", b"just some notes\nand more\n", None, r"--reply_to=.*notes.txt is not an email: it has no From or "
                                                         r"Subject header"),
])
def test_a_wrong_email_is_one_line(tmp_path, name, content, message_id, line):
  path = tmp_path / name
  if content == "mbox":
    write_mbox(path, thread())
  elif content is not None:
    path.write_bytes(content)
  with pytest.raises(UserError, match=line) as e:
    mail.read_email(str(path), message_id)
  assert "\n" not in str(e.value)
