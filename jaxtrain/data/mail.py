"""Mail as training text: mbox mailboxes, threads, and the one prompt an email assistant
reads, in training and when it drafts.

A reply to a message of the mailbox (In-Reply-To, else the newest References entry found)
is a training example; what the model reads before it writes is built here only:
  - with a chat template (`reply_messages`): a system message naming the reply's writer
    (in your own mailbox: you), then the email answered (a few headers and its text) as
    the user's turn; the reply's own words are the assistant's turn;
  - without one (`reply_prompt`): the email answered, a blank line, the reply's From, To
    and Subject and a blank line; the reply's own words follow.
A reply's own words are its body without the quoted message ("> " lines and the "On ...
wrote:" line above them, or everything from "-----Original Message-----"). The email
answered is shown as it arrived, its own quotes included. `python -m jaxtrain.generate
--reply_to=EMAIL` drafts from the same prompt (`read_email`, `reply_headers`).
"""

import email
import email.message
import email.policy
import email.utils
import html.parser
import mailbox
import os

from jaxtrain.errors import UserError

HEADERS = ("From", "To", "Subject", "Date")
REPLY_HEADERS = ("From", "To", "Subject")  # Not the Date: a draft is prompted before it has one.
MBOX_FORMATS = ("mbox", "mbox_replies")
SYSTEM = "You are {name}'s email assistant. Write {name}'s reply to the email below, as {name} writes."


def check_mbox(path):
  """Raises a UserError unless `path` is an mbox with at least one message. Python's
  mailbox module reads any file as an mbox (text before the first 'From ' line is
  skipped), so a wrong file would otherwise train on nothing, or fail much later."""
  with open(path, "rb") as f:
    head = f.read(1 << 16)
  first = next((line for line in head.splitlines() if line.strip()), b"")
  if not first:
    raise UserError(f"{path} is empty: an mbox mailbox holds at least one message (export one from your mail "
                    f"client, e.g. Thunderbird's ImportExportTools or Gmail's Takeout)")
  if not first.startswith(b"From "):
    shown = first[:40].decode("utf-8", "replace")
    raise UserError(f"{path} is not an mbox mailbox: it starts with '{shown}', not a 'From ' line; give an .mbox "
                    f"file (one file holding all the messages), or set the data's format to the file's format")


def mbox_messages(path):
  """The messages of the mbox at `path` (EmailMessages), in file order."""
  box = mailbox.mbox(path, create=False)
  try:
    for key in box.iterkeys():
      yield email.message_from_bytes(box.get_bytes(key), policy=email.policy.default)
  finally:
    box.close()


def threads(messages):
  """(parent, message) for each of `messages` (in order): parent is the message of
  `messages` it answers, or None."""
  by_id = {}
  for message in messages:
    by_id.setdefault(_header(message, "Message-ID"), message)
  by_id.pop(None, None)
  for message in messages:
    parent = _parent(message, by_id)
    yield (None if parent is message else parent), message


def reply_documents(messages, render=None, replies_only=False):
  """The documents of format 'mbox_replies' for `messages` (EmailMessages, in order): a reply
  is [(prompt, False), (its own words, True)], or with `render` (a conversation -> segments,
  e.g. chat.assistant_segments) the rendering of reply_messages and the reply; any other
  message is plain text, learnt whole (with `replies_only`: left out). Yields (document,
  split_text) pairs: what the document's split is drawn from, the same with or without a
  template (None: the document's own text)."""
  for parent, message in threads(messages):
    if parent is None:
      if not replies_only:
        yield [(message_text(message), True)], None
      continue
    prompt, words = reply_prompt(parent, message), reply_text(message)
    if render is None:
      yield [(prompt, False), (words, True)], None
    else:
      conversation = reply_messages(parent, message) + [{"role": "assistant", "content": words}]
      yield render(conversation), "\x00".join((prompt, words))


def reply_prompt(parent, reply_headers, text=None):
  """The prompt without a chat template: the message answered (headers and text), a blank
  line, then the reply's From, To and Subject and a blank line. `reply_headers` is a
  message, or a dict of header -> value (`reply_headers(parent)` gives them). `text`: the
  message answered as text, in place of message_text(parent) (e.g. cut to fit a context:
  sampling.fit_text)."""
  answered = message_text(parent) if text is None else text
  return answered.rstrip("\n") + "\n\n" + _header_lines(reply_headers, REPLY_HEADERS) + "\n\n"


def reply_messages(parent, reply_headers, text=None):
  """The prompt with a chat template: [system, user] messages. The system message names the
  reply's writer (its From: display name, else address); the user's is the email answered
  (`text`, as for reply_prompt)."""
  sender = reply_headers.get("From") if isinstance(reply_headers, dict) else _header(reply_headers, "From")
  name, address = email.utils.parseaddr(sender or "")
  return [{"role": "system", "content": SYSTEM.format(name=name or address or "the recipient")},
          {"role": "user", "content": message_text(parent) if text is None else text}]


def reply_headers(parent):
  """The headers of a reply to `parent`: From its first To address (the person it was sent
  to), To its sender, Subject 'Re: ' + its subject (once)."""
  recipients = email.utils.getaddresses([_header(parent, "To") or ""])
  sender = email.utils.formataddr(recipients[0]) if recipients and recipients[0][1] else None
  subject = _header(parent, "Subject") or ""
  if subject and not subject.lower().startswith("re:"):
    subject = "Re: " + subject
  return {"From": sender, "To": _header(parent, "From"), "Subject": subject}


def reply_text(message):
  """A reply's own words: its body without the quoted message."""
  lines = _body(message).split("\n")
  kept = []
  for line in lines:
    if line.startswith(">"):
      while kept and not kept[-1].strip():
        kept.pop()
      if kept and kept[-1].rstrip().endswith("wrote:"):  # "On Mon, 2 Jan 2026, Ann <a@b> wrote:"
        kept.pop()
      continue
    if line.strip() in ("-----Original Message-----", "-------- Original Message --------"):
      break
    kept.append(line)
  return "\n".join(kept).strip("\n") + "\n"


def read_email(path, message_id=None, *, flag="--reply_to"):
  """The email to answer: an .eml file (one message), or with `message_id` the message of
  the mbox at `path` that has it (with or without <>; an mbox of one message needs none).
  One line of UserError otherwise."""
  if not os.path.isfile(path):
    raise UserError(f"{flag}={path}: no such file; give an .eml file, or an mbox with --message_id")
  with open(path, "rb") as f:
    head = f.read(5)
  if head == b"From ":  # An mbox (or an .eml saved with its mbox 'From ' line: one message).
    if message_id is None:
      messages = list(mbox_messages(path))
      if len(messages) == 1:
        return messages[0]
      raise UserError(f"{flag}={path} is an mbox mailbox of {len(messages)} messages: say which to answer with "
                      f"--message_id=ID (its Message-ID header)")
    wanted = message_id.strip().strip("<>")
    for message in mbox_messages(path):
      if (_header(message, "Message-ID") or "").strip("<>") == wanted:
        return message
    raise UserError(f"{flag}={path}: no message has Message-ID <{wanted}>; copy it from the message's headers")
  if message_id is not None:
    raise UserError(f"--message_id picks a message of an mbox, but {flag}={path} is not one (an .eml file holds "
                    f"one message); leave --message_id out")
  with open(path, "rb") as f:
    message = email.message_from_binary_file(f, policy=email.policy.default)
  if not (message.get("From") or message.get("Subject")):
    raise UserError(f"{flag}={path} is not an email: it has no From or Subject header; give an .eml file (your "
                    f"mail client's 'Save as' or 'Show original')")
  return message


def _parent(message, by_id):
  candidates = [_header(message, "In-Reply-To")] + list(reversed((_header(message, "References") or "").split()))
  return next((by_id[c] for c in candidates if c in by_id), None)


def _header(message, name):
  try:
    value = message.get(name)
  except Exception:  # pylint: disable=broad-except  (a malformed header: keep it raw)
    value = message.get_all(name, failobj=[None])[0]
  return None if value is None else " ".join(str(value).split())


def message_text(message):
  """A few headers and the plain-text body of a message (an `email.message.EmailMessage`,
  or a message of `mailbox` or `email.message_from_*`'s older default policy)."""
  if not isinstance(message, email.message.EmailMessage):
    message = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
  return _header_lines(message) + "\n\n" + _body(message)


def _header_lines(message, names=HEADERS):
  if isinstance(message, dict):
    return "\n".join(f"{name}: {message[name]}" for name in names if message.get(name))
  return "\n".join(f"{name}: {value}" for name in names if (value := _header(message, name)) is not None)


def _body(message):
  body = ""
  part = message.get_body(preferencelist=("plain", "html"))
  if part is not None:
    body = _content(part)
    if part.get_content_subtype() == "html":
      body = _html_to_text(body)
  return body.replace("\r\n", "\n")


def _content(part):
  try:
    return part.get_content()  # Decodes base64 / quoted-printable and the charset.
  except (LookupError, UnicodeError, AssertionError, KeyError):  # An unknown or wrong charset.
    payload = part.get_payload(decode=True) or b""
    return payload.decode("utf-8", errors="replace")


class _HTMLText(html.parser.HTMLParser):
  BREAKS = {"br", "p", "div", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "blockquote"}

  def __init__(self):
    super().__init__(convert_charrefs=True)
    self.parts, self._skip = [], 0

  def handle_starttag(self, tag, attrs):
    self._skip += tag in ("script", "style")
    if tag in self.BREAKS:
      self.parts.append("\n")

  def handle_endtag(self, tag):
    self._skip -= tag in ("script", "style") and self._skip > 0

  def handle_data(self, data):
    if not self._skip:
      self.parts.append(data)


def _html_to_text(markup):
  parser = _HTMLText()
  parser.feed(markup)
  parser.close()
  lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
  return "\n".join(line for line in lines if line) + "\n"
