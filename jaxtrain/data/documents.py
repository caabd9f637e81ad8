"""The user's own text, read from files as documents, in a fixed order, split by hash.

A document is a list of (text, weighted) segments: [(text, True)] for plain text;
[(prompt, False), (completion, True)] for a prompt/completion pair, where only the
completion is scored. Formats:
  text               each file is one document (read as UTF-8 exactly, newlines included)
  jsonl              each line is a JSON object; one document per line, from `field`
  prompt_completion  each line is {"prompt": ..., "completion": ...} (fields configurable);
                     given a chat template (`render`), the pair is rendered as a user's
                     message and the assistant's reply, as 'chat' renders it
  chat               each line is {"messages": [{"role": ..., "content": ...}, ...]} (the
                     field configurable), rendered with the model's chat template
                     (`render`, e.g. chat.assistant_segments): the loss on the assistant's
                     spans alone (see jaxtrain.data.chat)
  mbox               each message of an mbox mailbox (Gmail Takeout, Thunderbird) is one
                     document: From, To, Subject and Date, a blank line, then the text/plain
                     body decoded for charset and transfer encoding (quoted-printable,
                     base64); in a multipart message the plain-text part, else the HTML
                     part as text; attachments are skipped.
  mbox_replies       the same messages as threads (jaxtrain.data.mail): a reply to a
                     message of the mailbox is a prompt/completion pair, the prompt being
                     the message it answers, the completion the reply's own words (quoted
                     text removed); given a chat template (`render`), a conversation: a
                     system message naming the reply's writer, the message answered as the
                     user's turn, the reply as the assistant's. Any other message is plain
                     text, as with 'mbox' (`replies_only`: left out).
Files are taken in sorted order (each glob sorted), documents in file order. Text and JSON
lines must be UTF-8: a file that is empty, not UTF-8 or binary is refused, naming it (or,
matched by a glob, skipped with a warning naming it); nothing is read with replacement
characters. A mailbox is bytes: each message's own charset decodes it.

The split is by document, from a hash of its content: `validation_fraction` of them (in
hash order, not file order) are 'validation', the rest 'train'. Content, not position, so
that adding a file does not move the others' documents, and a document repeated anywhere
lands in one split only (duplicates cannot leak from train into validation). A document
rendered through a chat template (`Rendered`) is split by its own text (the messages, or
the prompt and completion), not the rendering: the same split with or without a template,
whatever date a template prints.
"""

import codecs
import glob
import hashlib
import json
import os

from absl import logging

from jaxtrain.data import mail
from jaxtrain.errors import UserError

FORMATS = ("text", "jsonl", "prompt_completion", "mbox", "mbox_replies", "chat")
SPLITS = ("train", "validation")
TEXT_FORMATS = ("text", "jsonl", "prompt_completion", "chat")
TEMPLATE_FORMATS = ("prompt_completion", "chat", "mbox_replies")  # The formats a chat template renders.
# Checked at start-up per file (a binary shows in its first bytes); the rest as it is read.
SNIFF_BYTES = 1 << 20
NOT_UTF8_FIX = "re-save it as UTF-8, or leave it out"
_warned = set()  # Skipped files already named: once per process (a mixture checks before it opens).


def resolve_files(files, where, fmt=None):
  """Sorted paths matched by `files` (a glob, a path, or a list of them); each must match.
  `where` names the setting in errors: "config key 'input.data.files'", "--corpus". With a
  `fmt` of TEXT_FORMATS each file is checked (`unreadable`): one named outright must pass;
  one matched by a glob is skipped with a warning, but each glob must keep one."""
  patterns = [files] if isinstance(files, str) else list(files)
  if not patterns or not all(isinstance(p, str) for p in patterns):
    raise UserError(f"{where} must be a path or glob, or a list of them, got {files!r}")
  paths = []
  for pattern in patterns:
    matched = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
    if not matched:
      raise UserError(f"{where}: no files match '{pattern}'")
    matched = [os.path.abspath(p) for p in matched]
    paths.extend(_usable(matched, pattern, where) if fmt in TEXT_FORMATS else matched)
  return list(dict.fromkeys(paths))  # Each file once, in order.


def unreadable(path):
  """(problem, fix) if `path` is no UTF-8 text file, judged by its first SNIFF_BYTES; else None."""
  with open(path, "rb") as f:
    head = f.read(SNIFF_BYTES + 1)
  if not head.strip():
    return ("is empty" if not head else "holds only whitespace"), "put text in it, or leave it out"
  try:  # Not final when cut: a character split at the cut is no error.
    codecs.getincrementaldecoder("utf-8")().decode(head[:SNIFF_BYTES], final=len(head) <= SNIFF_BYTES)
  except UnicodeDecodeError as e:
    return "is " + _not_utf8(head, e.start), NOT_UTF8_FIX
  nul = head.find(b"\x00", 0, SNIFF_BYTES)  # Valid UTF-8, but no text has it (UTF-16 does, and binaries).
  if nul >= 0:
    return f"is binary, not text (a NUL byte at offset {nul})", "leave it out"
  return None


def _usable(paths, pattern, where):
  problems = {path: problem for path in paths if (problem := unreadable(path))}
  if problems and not glob.has_magic(os.path.expanduser(pattern)):  # Named outright: refused.
    path, (problem, fix) = next(iter(problems.items()))
    raise UserError(f"{where}: {path} {problem}; {fix}")
  if len(problems) == len(paths):
    path, (problem, fix) = next(iter(problems.items()))
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    raise UserError(f"{where}: no usable file matches '{pattern}': {path} {problem}{more}; {fix}")
  for path, (problem, _) in problems.items():
    if (where, path) not in _warned:
      _warned.add((where, path))
      logging.warning("%s: skipping %s, matched by '%s': it %s", where, path, pattern, problem)
  return [path for path in paths if path not in problems]


def _not_utf8(data, offset, start=0):
  """'not UTF-8 text (...)' for the bad byte data[offset], at `start + offset` in the file."""
  return f"not UTF-8 text (byte 0x{data[offset]:02x} at offset {start + offset})"


class Rendered(list):
  """A document made by a chat template: its segments, `special_tokens` (its spellings of
  special tokens are those tokens: packing), and `split_text`, what its split is drawn from."""

  special_tokens = True

  def __init__(self, segments, split_text):
    super().__init__(segments)
    self.split_text = split_text


def read(fmt, paths, *, field="text", prompt_field="prompt", completion_field="completion",
         messages_field="messages", render=None, replies_only=False):
  """Yields the documents of `paths` in order. `render` (messages -> segments, e.g.
  chat.assistant_segments with a tokenizer) renders 'chat' conversations, and
  'prompt_completion' pairs and 'mbox_replies' replies where given."""
  if fmt == "text":
    for path in paths:
      with open(path, "rb") as f:
        raw = f.read()
      try:
        document = [(raw.decode("utf-8"), True)]
      except UnicodeDecodeError as e:  # Past what resolve_files checked, or a file it did not check.
        raise UserError(f"{path} is {_not_utf8(raw, e.start)}; {NOT_UTF8_FIX}") from None
      yield document
  elif fmt == "jsonl":
    for path, line, record in _json_lines(paths):
      yield [(_field(record, field, path, line, "field"), True)]
  elif fmt == "prompt_completion":
    for path, line, record in _json_lines(paths):
      prompt = _field(record, prompt_field, path, line, "prompt_field")
      completion = _field(record, completion_field, path, line, "completion_field")
      if render is None:
        yield [(prompt, False), (completion, True)]
      else:
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        yield _rendered(render, messages, "\x00".join((prompt, completion)), path, line)
  elif fmt == "chat":
    if render is None:
      raise UserError("format 'chat' is rendered with a model's chat template: give the tokenizer of a model "
                      "that has one")
    for path, line, record in _json_lines(paths):
      messages = _encodable(_value(record, messages_field, path, line, "messages_field"))
      yield _rendered(render, messages, json.dumps(messages, ensure_ascii=False, sort_keys=True), path, line)
  elif fmt == "mbox":
    for path in paths:
      yield from ([(mail.message_text(message), True)] for message in mail.mbox_messages(path))
  elif fmt == "mbox_replies":
    messages = [message for path in paths for message in mail.mbox_messages(path)]
    for document, split_text in mail.reply_documents(messages, render, replies_only):
      yield document if split_text is None else Rendered(document, split_text)
  else:
    raise UserError(f"unknown text format '{fmt}'; the formats are {', '.join(FORMATS)}")


def _rendered(render, messages, split_text, path, line):
  try:
    return Rendered(render(messages), split_text)
  except UserError as e:
    raise UserError(f"{path}:{line}: {e}") from None


def in_split(document, split, validation_fraction):
  """Whether `document` belongs to `split` ('train' or 'validation')."""
  text = getattr(document, "split_text", None)
  if text is None:
    text = "\x00".join(segment for segment, _ in document)
  digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
  validation = int.from_bytes(digest[:8], "big") < validation_fraction * 2**64
  return validation == (split == "validation")


def _json_lines(paths):
  for path in paths:
    with open(path, "rb") as f:
      start = 0
      for number, raw in enumerate(f, 1):
        try:
          line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
          raise UserError(f"{path}:{number}: {_not_utf8(raw, e.start, start)}; {NOT_UTF8_FIX}") from None
        start += len(raw)
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise UserError(f"{path}:{number}: not a JSON line ({e.msg}); each line must be one JSON object") from None
        yield path, number, record


def _value(record, field, path, line, key):
  if not isinstance(record, dict) or field not in record:
    have = f"; it has {', '.join(sorted(record))}" if isinstance(record, dict) else ""
    raise UserError(f"{path}:{line}: no field '{field}' in this JSON line{have} (the data section's '{key}' "
                    f"names the field to read)")
  return record[field]


def _field(record, field, path, line, key):
  value = _value(record, field, path, line, key)
  if not isinstance(value, str):
    raise UserError(f"{path}:{line}: field '{field}' must be a string, got {type(value).__name__}")
  return _encodable(value)


def _encodable(value):
  """`value` with each lone surrogate ("\\ud800" in the JSON: not text any tokenizer takes) as
  '?', in a string or in the strings of lists and dicts."""
  if isinstance(value, str):
    try:
      value.encode("utf-8")
    except UnicodeEncodeError:
      value = value.encode("utf-8", "replace").decode("utf-8")
    return value
  if isinstance(value, list):
    return [_encodable(v) for v in value]
  if isinstance(value, dict):
    return {k: _encodable(v) for k, v in value.items()}
  return value
