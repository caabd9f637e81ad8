"""Language-model tasks read from JSONL, with lm-evaluation-harness (0.4) semantics.

One document a line. Multiple choice, scored by the log-likelihood of each choice:

    {"query": "def add(a, b):", "choices": ["return a + b", "return a - b"], "gold": 0}

Generation, scored by exact match (after stripping both sides) of a greedy completion
that ends before the first stop string:

    {"query": "2 + 2 =", "answer": "4"}

A task may instead be a `.json` spec that renders documents of any shape through
templates (`str.format` over the document's fields: plain `{field}` or `{field:>5}`, never
`{field.attribute}`, `{field[0]}` or `{field!r}`), which makes zero-shot classification by
prompt the same machinery:

    {"docs": "reviews.jsonl", "query": "Review: {text}\\nSentiment:",
     "choices": ["negative", "positive"], "gold": "label"}

Spec keys: `docs` (required; relative to the spec), `query` (template, default
'{query}'), `choices` (a list of fixed strings, or the name of a field holding the list;
default 'choices'), `gold` (a field holding the index or the correct choice's text;
default 'gold'), `answer` (template of a generation task's answer; setting it makes the
task a generation task), `fewshot_docs`, `target_delimiter`, `fewshot_delimiter`, `until`
and `max_gen_toks`.

The context of a document is k few-shot examples, each `query + target_delimiter +
target`, each followed by `fewshot_delimiter`, then the document's query. The examples are
drawn from the few-shot documents (a separate file), else from the task's own documents
without the document itself, by one `random.Random(seed)` that draws for the documents in
order: the same examples as the harness gives for the same seed (1234 by default).
"""

import dataclasses
import json
import math
import os
import random
import string

import numpy as np

from jaxtrain.errors import UserError

MULTIPLE_CHOICE, GENERATION = "multiple_choice", "generation"
FEWSHOT_SEED = 1234
_SPEC_KEYS = {"docs", "query", "choices", "gold", "answer", "fewshot_docs", "target_delimiter", "fewshot_delimiter",
              "until", "max_gen_toks"}


@dataclasses.dataclass
class Task:
  """Documents normalised to {'query', 'choices', 'gold'} or {'query', 'answer'}."""

  name: str
  kind: str
  docs: list
  fewshot_docs: list | None = None  # None: drawn from `docs`, never the document itself.
  target_delimiter: str = " "
  fewshot_delimiter: str = "\n\n"
  until: tuple = None  # Generation stops before the first of these; default: the few-shot delimiter.
  max_gen_toks: int = 256

  def __post_init__(self):
    if self.until is None:
      self.until = (self.fewshot_delimiter,)

  def target(self, doc):
    return doc["choices"][doc["gold"]] if self.kind == MULTIPLE_CHOICE else doc["answer"]

  def contexts(self, num_fewshot, seed=FEWSHOT_SEED, limit=None):
    """The context string of each of the first `limit` documents, with `num_fewshot`
    examples each."""
    docs = self.docs[:limit] if limit else self.docs
    pool = self.docs if self.fewshot_docs is None else self.fewshot_docs
    own = self.fewshot_docs is None
    if num_fewshot > len(pool) - own:
      where = "the task's other documents" if own else "the few-shot documents"
      raise UserError(f"task {self.name}: {num_fewshot}-shot needs {num_fewshot} examples but {where} hold "
                      f"{len(pool) - own}")
    rng = random.Random(seed)
    contexts = []
    for doc in docs:
      shots = []
      if num_fewshot:
        # From its own documents: one more is drawn, and the document itself dropped.
        drawn = rng.sample(pool, num_fewshot + own)
        shots = [d for d in drawn if d != doc][:num_fewshot]
      examples = "".join(d["query"] + self.target_delimiter + self.target(d) + self.fewshot_delimiter
                         for d in shots)
      contexts.append(examples + doc["query"])
    return contexts


def load(path, fewshot_path=None, **overrides):
  """A Task from a `.jsonl` file of documents or a `.json` spec; `fewshot_path` (a
  `.jsonl` of documents like the task's) replaces the spec's few-shot documents."""
  path = os.path.expanduser(str(path))
  if not os.path.isfile(path):
    raise UserError(f"task file {path} does not exist")
  name = os.path.splitext(os.path.basename(path))[0]
  if path.endswith(".json"):
    spec = _read_spec(path)
    docs_path = os.path.join(os.path.dirname(path), spec.pop("docs"))
    spec_fewshot = spec.pop("fewshot_docs", None)
    if fewshot_path is None and spec_fewshot is not None:
      fewshot_path = os.path.join(os.path.dirname(path), spec_fewshot)
  else:
    docs_path, spec = path, {}
  templates = {key: spec.pop(key) for key in ("query", "choices", "gold", "answer") if key in spec}
  kind, docs = read_docs(docs_path, templates)
  fewshot = None
  if fewshot_path is not None:
    fewshot_kind, fewshot = read_docs(os.path.expanduser(str(fewshot_path)), templates)
    if fewshot_kind != kind:
      raise UserError(f"few-shot file {fewshot_path} holds {fewshot_kind} documents but task {path} {kind}")
  task = Task(name, kind, docs, fewshot, **spec)
  for key, value in overrides.items():
    if value is not None:
      setattr(task, key, value)
  return task


def _read_spec(path):
  try:
    with open(path, encoding="utf-8") as f:
      spec = json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise UserError(f"task spec {path} is not valid JSON: {e}") from None
  if not isinstance(spec, dict) or not isinstance(spec.get("docs"), str):
    raise UserError(f"task spec {path} must be a JSON object with 'docs', the documents' .jsonl file")
  unknown = sorted(set(spec) - _SPEC_KEYS)
  if unknown:
    raise UserError(f"task spec {path}: unknown key {unknown[0]!r}; the keys are {', '.join(sorted(_SPEC_KEYS))}")
  for key in ("target_delimiter", "fewshot_delimiter"):
    if not isinstance(spec.get(key, ""), str):
      raise UserError(f"task spec {path}: {key!r} must be a string")
  if "until" in spec:
    until = spec["until"]
    if isinstance(until, str) or not isinstance(until, list) or not all(isinstance(u, str) and u for u in until):
      raise UserError(f"task spec {path}: 'until' must be a list of non-empty strings")
    spec["until"] = tuple(until)
  if not isinstance(spec.get("max_gen_toks", 1), int) or spec.get("max_gen_toks", 1) < 1:
    raise UserError(f"task spec {path}: 'max_gen_toks' must be a positive integer")
  for key in ("query", "answer"):
    if key in spec:
      _check_template(path, key, spec[key])
  return spec


def _check_template(path, what, template):
  """Plain fields of the document only, each maybe with a format spec: str.format would
  reach a field's attributes and items ({text.upper} renders a bound method)."""
  if not isinstance(template, str):
    raise UserError(f"task spec {path}: the {what} template must be a string, got {template!r}")
  try:
    fields = _fields(template)
  except ValueError as e:
    raise UserError(f"task spec {path}: the {what} template {template!r} is not a format string: {e}") from None
  for name, conversion in fields:
    if not name or name.isdigit() or "." in name or "[" in name or conversion:
      shown = name + (f"!{conversion}" if conversion else "")
      raise UserError(f"task spec {path}: the {what} template {template!r} has field {{{shown}}}: use plain fields "
                      f"of the document, e.g. {{text}} or {{text:>5}} (no attributes, indexing, conversions or "
                      f"positions)")


def _fields(template):
  """[(field name, conversion)] of a format string, the fields nested in format specs too."""
  fields = []
  for _, name, format_spec, conversion in string.Formatter().parse(template):
    if name is not None:
      fields += [(name, conversion)] + _fields(format_spec or "")
  return fields


def _check_utf8(path):
  """One line naming the file and the line where task file `path` is not UTF-8 text."""
  with open(path, "rb") as f:
    data = f.read()
  try:
    data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    raise UserError(f"task file {path}, line {line}: not UTF-8 text (a binary file?); give a .jsonl file, one JSON "
                    f"document a line") from None


def read_docs(path, templates=None):
  """(kind, documents) of a JSONL file; every mistake names the file and the line."""
  if not os.path.isfile(path):
    raise UserError(f"task file {path} does not exist")
  templates = templates or {}
  kind, docs = None, []
  _check_utf8(path)
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}, line {number}"
      try:
        raw = json.loads(line)
      except ValueError as e:
        raise UserError(f"{where}: not valid JSON ({e})") from None
      if not isinstance(raw, dict):
        raise UserError(f"{where}: a document must be a JSON object, got {type(raw).__name__}")
      doc = _document(raw, templates, where)
      doc_kind = MULTIPLE_CHOICE if "choices" in doc else GENERATION
      if kind not in (None, doc_kind):
        raise UserError(f"{where}: a {doc_kind} document in a file of {kind} documents; keep one kind per file")
      kind = doc_kind
      docs.append(doc)
  if not docs:
    raise UserError(f"task file {path} holds no documents")
  return kind, docs


def _document(raw, templates, where):
  if not templates and not ("query" in raw and ("answer" in raw or "choices" in raw)):
    raise UserError(f"{where}: a document needs 'query' with 'choices' and 'gold' (multiple choice) or 'answer' "
                    f"(generation); this one has {', '.join(sorted(raw)) or 'no keys'}")
  query = _render(templates.get("query", "{query}"), raw, where, "query")
  if "answer" in templates or ("answer" in raw and "choices" not in raw and "choices" not in templates):
    answer = _render(templates.get("answer", "{answer}"), raw, where, "answer")
    return {"query": query, "answer": answer}
  choices = templates.get("choices", "choices")
  if isinstance(choices, str):
    if choices not in raw:
      raise UserError(f"{where}: a document needs 'query' with 'choices' and 'gold' (multiple choice) or "
                      f"'answer' (generation); this one has {', '.join(sorted(raw)) or 'no keys'}")
    choices = raw[choices]
  if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
    raise UserError(f"{where}: 'choices' must be a list of strings, got {choices!r}")
  if not choices:
    raise UserError(f"{where}: the choice list is empty; give at least one choice")
  gold_key = templates.get("gold", "gold")
  if gold_key not in raw:
    raise UserError(f"{where}: no {gold_key!r}: the index of the correct choice")
  gold = raw[gold_key]
  if isinstance(gold, str) and gold in choices:
    gold = choices.index(gold)
  if not isinstance(gold, int) or isinstance(gold, bool):
    raise UserError(f"{where}: {gold_key!r} must be the index of the correct choice (or its text), got {gold!r}")
  if not 0 <= gold < len(choices):
    raise UserError(f"{where}: {gold_key!r} {gold} is out of range for {len(choices)} choices (0 to {len(choices) - 1})")
  return {"query": query, "choices": list(choices), "gold": gold}


def _render(template, raw, where, what):
  if not isinstance(template, str):
    raise UserError(f"{where}: the {what} template must be a string, got {template!r}")
  try:
    text = string.Formatter().vformat(template, (), raw)
  except KeyError as e:
    raise UserError(f"{where}: the {what} template {template!r} needs field {e.args[0]!r}, which this document "
                    f"lacks") from None
  except (ValueError, IndexError, TypeError) as e:  # TypeError: a spec a list or dict refuses ({choices:>5}).
    raise UserError(f"{where}: cannot render the {what} template {template!r}: {e}") from None
  if template == f"{{{what}}}" and not isinstance(raw.get(what), str):
    raise UserError(f"{where}: {what!r} must be a string, got {raw.get(what)!r}")
  return text


# ---- Scores ---------------------------------------------------------------------------


def choice_results(doc, loglikelihoods):
  """acc and acc_norm of one document: the best sum, and the best sum per character of
  the choice (ties go to the first choice, as numpy's argmax)."""
  lls = np.asarray(loglikelihoods, np.float64)
  lengths = np.array([float(len(c)) for c in doc["choices"]])
  with np.errstate(divide="ignore", invalid="ignore"):  # An empty choice has length 0, as in the harness.
    normed = lls / lengths
  return {"acc": int(np.argmax(lls) == doc["gold"]), "acc_norm": int(np.argmax(normed) == doc["gold"])}


def exact_match(completion, answer):
  return int(completion.strip() == answer.strip())


def mean_and_stderr(values):
  """The mean and its standard error, sample standard deviation / sqrt(n), as the
  harness reports for acc, acc_norm and exact_match (NaN for one document)."""
  values = np.asarray(values, np.float64)
  n = len(values)
  if n < 2:
    return float(values.mean()), float("nan")
  return float(values.mean()), float(values.std(ddof=1) / math.sqrt(n))


def summary(per_doc, metric_names):
  """{metric, metric_stderr, ..., n} over the documents' results."""
  out = {}
  for name in metric_names:
    out[name], out[f"{name}_stderr"] = mean_and_stderr([r[name] for r in per_doc])
  out["n"] = len(per_doc)
  return out
