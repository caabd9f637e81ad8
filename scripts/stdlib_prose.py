"""The English prose that ships with Python beside its code: a text corpus no run of
experiments/code_lm.py has seen (it trains on the standard library's .py files only).

    docs = prose_documents(PROSE_FILES)   # [{'text', 'source'}], ~550 paragraphs, ~250 KB

scripts/lessons.py fine-tunes the code LM on it (catastrophic forgetting) and trains a small
model from scratch on idlelib/NEWS.txt alone (overfitting).
"""

import html.parser
import json
import os
import re
import sysconfig

# The prose that ships with Python beside its code (paths under the stdlib directory).
PROSE_FILES = ("idlelib/NEWS.txt", "idlelib/NEWS2x.txt", "idlelib/README.txt", "idlelib/HISTORY.txt",
               "idlelib/TODO.txt", "idlelib/CREDITS.txt", "idlelib/extend.txt", "LICENSE.txt",
               "email/architecture.rst", "idlelib/help.html")


class _HTMLText(html.parser.HTMLParser):
  """The text of an HTML page, a blank line at each block element."""
  BLOCKS = {"p", "div", "h1", "h2", "h3", "h4", "li", "dt", "dd", "pre", "tr", "br", "section", "blockquote", "title"}

  def __init__(self):
    super().__init__()
    self.parts, self.hidden = [], 0

  def handle_starttag(self, tag, attrs):
    self.hidden += tag in ("script", "style")
    if tag in self.BLOCKS:
      self.parts.append("\n\n")

  def handle_endtag(self, tag):
    self.hidden -= tag in ("script", "style")
    if tag in self.BLOCKS:
      self.parts.append("\n\n")

  def handle_data(self, data):
    if not self.hidden:
      self.parts.append(data)


def prose_documents(files, min_chars=200):
  """[{'text', 'source'}]: the files' paragraphs (blank-line separated), joined in order
  until each document holds at least `min_chars` characters."""
  root = sysconfig.get_paths()["stdlib"]
  docs = []
  for rel in files:
    with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as f:
      text = f.read()
    if rel.endswith(".html"):
      parser = _HTMLText()
      parser.feed(text)
      text = re.sub(r"[ \t]+\n", "\n", "".join(parser.parts))
    chunk = ""
    for paragraph in re.split(r"\n\s*\n", text):
      paragraph = paragraph.strip("\n")
      if paragraph.strip():
        chunk = f"{chunk}\n\n{paragraph}" if chunk else paragraph
        if len(chunk) >= min_chars:
          docs.append({"text": chunk, "source": rel})
          chunk = ""
    if chunk:
      docs.append({"text": chunk, "source": rel})
  return docs


def write_jsonl(path, docs):
  """Writes `docs` unless the file already holds exactly them (so the data caches keep)."""
  text = "".join(json.dumps(d) + "\n" for d in docs)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      if f.read() == text:
        return path
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(path + ".tmp", path)
  return path
