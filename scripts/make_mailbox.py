"""Writes a demo mailbox for experiments/email_assistant.py from text that ships with Python.

    python scripts/make_mailbox.py --out=mail/python_help.mbox

Colleagues ask what a standard-library function does; "me" answers with the first
paragraphs of its docstring, quoting the question below the reply as mail clients do. Each
module's own docstring arrives as a newsletter nobody answered (plain text for the model).
So the mailbox has what a real one has: threads found by In-Reply-To (every fifth reply by
References only), quoted text to strip, and messages that answer nothing. Deterministic:
the same Python gives the same bytes.
"""

import argparse
import email.message
import email.utils
import inspect
import importlib
import mailbox
import os
import re

MODULES = ("bisect", "base64", "calendar", "collections", "csv", "datetime", "difflib", "fnmatch", "functools",
           "glob", "heapq", "itertools", "json", "math", "os.path", "random", "re", "shutil", "statistics", "string",
           "textwrap", "urllib.parse", "zipfile")
ME = "Sam Lee <sam@example.com>"
COLLEAGUES = ("Ann Park <ann@example.com>", "Bo Chen <bo@example.com>", "Cy Diaz <cy@example.com>")
START = 1767225600  # 2026-01-01 00:00 UTC.


def questions():
  """(module, name, signature, answer) for the documented public functions of MODULES."""
  found = []
  for module_name in MODULES:
    module = importlib.import_module(module_name)
    for name in sorted(dir(module)):
      obj = getattr(module, name)
      if name.startswith("_") or not callable(obj) or inspect.isclass(obj):
        continue
      if getattr(obj, "__module__", module.__name__) not in (module.__name__, module_name, None):
        continue  # Imported from elsewhere.
      doc = inspect.getdoc(obj) or ""
      answer = "\n\n".join(doc.split("\n\n")[:2]).strip()
      if len(answer) < 40:
        continue
      try:
        signature = re.sub(r" at 0x[0-9a-f]+", "", f"{module_name}.{name}{inspect.signature(obj)}")  # Same bytes.
      except (TypeError, ValueError):
        signature = f"{module_name}.{name}()"
      found.append((module_name, name, signature, answer[:700]))
  return found


def messages():
  """The mailbox's messages, in order."""
  out, when = [], START
  for module_name in MODULES:
    doc = (inspect.getdoc(importlib.import_module(module_name)) or "").strip()
    if doc:
      out.append(message("Python Weekly <news@example.com>", ME, f"Module of the week: {module_name}",
                          doc[:1500] + "\n", when, f"<news-{module_name}@example.com>"))
      when += 3600
  for i, (module_name, name, signature, answer) in enumerate(questions()):
    asker = COLLEAGUES[i % len(COLLEAGUES)]
    first = asker.split()[0]
    question = (f"Hi Sam,\n\nquick one: what does {signature} do? I keep seeing it in the "
                f"{module_name} code.\n\nThanks,\n{first}\n")
    question_id = f"<q{i}@example.com>"
    out.append(message(asker, ME, f"{module_name}.{name}?", question, when, question_id))
    quoted = "".join(f"> {line}\n" if line else ">\n" for line in question.splitlines())
    date = email.utils.formatdate(when, usegmt=True)
    reply = f"Hi {first},\n\n{answer}\n\nBest,\nSam\n\nOn {date}, {asker} wrote:\n{quoted}"
    out.append(message(ME, asker, f"Re: {module_name}.{name}?", reply, when + 1800, f"<r{i}@example.com>",
                        reply_to=None if i % 5 == 4 else question_id, references=question_id))
    when += 7200
  return out


def message(sender, to, subject, body, when, message_id, reply_to=None, references=None):
  """An EmailMessage sent at `when` (seconds since the epoch)."""
  message = email.message.EmailMessage()
  message["From"], message["To"], message["Subject"] = sender, to, subject
  message["Date"] = email.utils.formatdate(when, usegmt=True)
  message["Message-ID"] = message_id
  if reply_to:
    message["In-Reply-To"] = reply_to
  if references:
    message["References"] = references
  message.set_content(body)
  return message


def write(path):
  """Writes the mailbox to `path` (replacing it); returns the number of messages."""
  if os.path.exists(path):
    os.remove(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  box = mailbox.mbox(path)
  found = messages()
  try:
    for message in found:
      entry = mailbox.mboxMessage(message)
      sent = email.utils.parsedate_to_datetime(message["Date"]).timetuple()
      entry.set_from(email.utils.parseaddr(message["From"])[1], sent)  # Not today's date: the same bytes.
      box.add(entry)
  finally:
    box.close()
  return len(found)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  parser.add_argument("--out", default="mail/python_help.mbox", help="The mbox file to write.")
  args = parser.parse_args()
  count = write(args.out)
  print(f"Wrote {count} messages to {args.out} ({os.path.getsize(args.out) / 1e3:.0f} KB).")


if __name__ == "__main__":
  main()
