"""tests/e2e/lab_mailbox.py, the second demo mailbox: read back as jaxtrain reads mail, every reply by its owner is
the owner's words alone ("Hello <first>!" ... "Cheers,\\nKim", no quote left whichever way it was quoted), its HTML
and base64 messages decode to their non-ASCII text, the same arguments write the same bytes, and its unseen emails
are new to the mailbox, half from strangers."""

import email.utils
import re

import lab_mailbox
from jaxtrain.data import documents
from jaxtrain.data import mail

OWNER = email.utils.parseaddr(lab_mailbox.OWNER)[1]


def address(message):
  return email.utils.parseaddr(str(message["From"]))[1]


def plain(message):
  return message.get_body(("plain",)).get_content()


def test_owner_replies_are_the_owners_words_alone(tmp_path):
  path = str(tmp_path / "lab.mbox")
  count = lab_mailbox.write(path, threads=20)
  messages = list(mail.mbox_messages(path))
  pairs = list(mail.threads(messages))
  docs = list(documents.read("mbox_replies", [path]))
  assert len(messages) == len(docs) == count
  assert sum(parent is None for parent, _ in pairs) == 20 + 3  # The threads' first emails, and 3 of list mail.
  owners = 0
  for (parent, message), doc in zip(pairs, docs):
    if parent is None:
      assert len(doc) == 1 and address(message) != OWNER
      continue
    assert len(doc) == 2 and doc[0][0] == mail.reply_prompt(parent, message)
    if address(message) != OWNER:
      continue
    owners += 1
    completion = doc[1][0]
    assert completion == mail.reply_text(message)
    assert completion.startswith(f"Hello {lab_mailbox.first_name(str(parent['From']))}!\n\n"), completion
    assert completion.endswith("\n\nCheers,\nKim\n"), completion
    assert not any(line.startswith(">") for line in completion.splitlines()), completion
    assert "-----Original Message-----" not in completion and "wrote:" not in completion, completion
    words = completion.split("\n\n")[1]
    assert 15 <= len(words.split()) <= 50 and 1 <= len(re.findall(r"[.?!](?: |$)", words)) <= 3, words
  assert owners >= 20
  # Both ways of quoting, the three-message threads and the threading by References alone all occur.
  replies = [plain(m) for m in messages if address(m) == OWNER]
  assert any("\n-----Original Message-----\nFrom: " in r for r in replies)
  assert any(re.search(r"\n.* wrote:\n> ", r) for r in replies)
  assert sum(parent is not None and address(m) != OWNER for parent, m in pairs) >= 3  # Kim replies twice.
  assert any(m["References"] and not m["In-Reply-To"] for m in messages)


def test_html_and_base64_messages_decode_to_their_text(tmp_path):
  path = str(tmp_path / "lab.mbox")
  lab_mailbox.write(path, threads=20)
  multipart, base64 = 0, 0
  for message in mail.mbox_messages(path):
    parts = [p for p in message.walk() if not p.is_multipart()]
    if len(parts) > 1:
      assert message.get_content_type() == "multipart/alternative"
      assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    if not (len(parts) > 1 or any(p["Content-Transfer-Encoding"] == "base64" for p in parts)):
      continue
    names = [lab_mailbox.first_name(str(message[h])) for h in ("From", "To")]
    names = [n for n in names if not n.isascii()]
    text = mail.message_text(message).split("\n\n", 1)[1]  # The body, without the headers.
    for name in names:  # The owner's greeting or the writer's sign-off names them.
      assert name in text and all(name in p.get_content() for p in parts), (name, text)
    multipart += len(parts) > 1 and bool(names)
    base64 += any(p["Content-Transfer-Encoding"] == "base64" for p in parts) and bool(names)
  assert multipart and base64, (multipart, base64)


def test_same_arguments_same_bytes(tmp_path):
  first, second = tmp_path / "a.mbox", tmp_path / "b.mbox"
  lab_mailbox.write(str(first), threads=20, seed=3)
  lab_mailbox.write(str(second), threads=20, seed=3)
  assert first.read_bytes() == second.read_bytes()
  lab_mailbox.write(str(second), threads=20, seed=4)
  assert first.read_bytes() != second.read_bytes()
  paths = [lab_mailbox.unseen(str(tmp_path / d), count=4, seed=3, threads=20) for d in ("u1", "u2")]
  assert [open(p, "rb").read() for p in paths[0]] == [open(p, "rb").read() for p in paths[1]]


def test_unseen_emails_are_new_to_the_mailbox(tmp_path):
  path = str(tmp_path / "lab.mbox")
  lab_mailbox.write(path, threads=20)
  known = list(mail.mbox_messages(path))
  senders, bodies = {address(m) for m in known}, {plain(m) for m in known}
  paths = lab_mailbox.unseen(str(tmp_path / "unseen"), count=8, threads=20)
  assert [p.rsplit("/", 1)[1] for p in paths] == [f"unseen_{k}.eml" for k in range(1, 9)]
  emails = [mail.read_email(p) for p in paths]
  assert all(str(e["To"]) == lab_mailbox.OWNER and plain(e) not in bodies for e in emails)
  assert [address(e) in senders for e in emails] == [True, False] * 4
  assert len({str(e["From"]) for e in emails[1::2]}) == 4  # Four strangers.
  assert len({str(e["Subject"]) for e in emails}) == 8
