"""Text for language models, from the config: tokenized, packed and cached on first use.

    input.data = dict(name='stdlib_code', split='train', seq_len=256,
                      tokenizer=dict(kind='sentencepiece', vocab_size=4096))
    input.data = dict(format='jsonl', files='~/notes/*.jsonl', field='text', split='train',
                      validation_fraction=0.05, seq_len=512, tokenizer=dict(path='spm.model'))

Keys (under input.data, or an evaluator's data):
  split                'train' | 'validation' (| 'test' for a TFDS dataset); required
  seq_len              tokens per row (int >= 2); required unless `like` has it
  tokenizer            a path (str), or a section: path (a .model / tokenizer.json / HF dir;
                       unset: train one), kind ('sentencepiece' | 'bpe', 'sentencepiece'),
                       vocab_size (4096)
  data_dir             where TFDS data, trained tokenizers and packed caches live
  name                 a TFDS dataset with a text feature (e.g. 'stdlib_code'), or:
  files                a path or glob, or a list of them (the user's files), with
    format             'text' (default) | 'jsonl' | 'prompt_completion' | 'mbox' |
                       'mbox_replies' (see jaxtrain.data.documents)
    validation_fraction  0.05: the share of documents (by hash) in 'validation'
  field                the text feature / JSON field ('text'); for TFDS and 'jsonl'
  prompt_field, completion_field   'prompt', 'completion' (for 'prompt_completion')
  messages_field       'messages' (for 'chat': a list of {'role', 'content'} per line)
  replies_only         for 'mbox_replies': False (default) learns the messages that answer
                       nothing as plain text; True leaves them out (newsletters, and each
                       thread's first message, which the prompts of its replies show anyway)
  chat_template        for 'prompt_completion', 'chat' and 'mbox_replies': 'auto' (default)
                       renders them with the tokenizer's chat template where it has one (a
                       user's message and the assistant's reply; the loss on the assistant's
                       spans alone, see jaxtrain.data.chat and .mail), 'none' keeps
                       prompt/completion pairs and replies plain text.
                       'chat' needs a template; without one a pair is plain text, as ever.

A tokenizer left unset is trained on the TRAIN split of the same data on first use and
kept in DATA_DIR/jaxtrain_text/tokenizers/; the packed token stream of each split is kept
in DATA_DIR/jaxtrain_text/ under a hash of the data, the split and the tokenizer file's
bytes (not seq_len: rows are cut at read time). With several processes, process 0 makes
each first and the others wait for it, then read it (or, on a disk of their own, make
their own identical copy).

Measured (2 shared cores, stdlib_code train: 656 files, 10.6 MB, vocab 4096): training the
tokenizer takes 45-55 s (SentencePiece unigram) or ~2 s (byte-level BPE); tokenizing and
packing 2.4 s (3.22 M tokens) or 3.9 s (3.11 M tokens); opening it again from the cache in a
new process 0.03 s; reading a batch of 64 rows of 256 0.3-0.5 ms.
"""

import functools
import os
import time

from absl import logging
import jax
import numpy as np
import tensorflow_datasets as tfds

from jaxtrain.data import chat
from jaxtrain.data import documents
from jaxtrain.data import mail
from jaxtrain.data import packing
from jaxtrain.data import sources
from jaxtrain.data import tokenizers
from jaxtrain.errors import UserError

TEXT_KEYS = ("seq_len", "tokenizer", "format", "files", "field", "prompt_field", "completion_field",
             "messages_field", "chat_template", "replies_only", "validation_fraction")
CHAT_TEMPLATE_CHOICES = ("auto", "none")
TEXT_DATASETS = ("stdlib_code",)  # TFDS names that are text whatever the keys.
DEFAULT_KIND, DEFAULT_VOCAB_SIZE = "sentencepiece", 4096
# Tokenizers train on at most this many characters of the train split (every k-th
# document beyond it): unigram SentencePiece takes ~50 s for 12 M characters.
TOKENIZER_TRAINING_CHARS = 50_000_000


def is_text(data, like=None):
  """Whether a data section (a config Reader) asks for packed text."""
  return (isinstance(like, packing.PackedSource) or any(key in data for key in TEXT_KEYS)
          or data.get("name", kind=str) in TEXT_DATASETS)


def open_from_config(data, default_data_dir=None, like=None):
  """A `packing.PackedSource` for a data section; `like` (another PackedSource, e.g. the
  training data) supplies the dataset, tokenizer, seq_len and data_dir the section lacks."""
  like = like if isinstance(like, packing.PackedSource) else None
  inherited = like.options if like else {}
  split = data.split
  seq_len = data.get("seq_len", inherited.get("seq_len"), kind=int, minimum=2)
  if seq_len is None:
    seq_len = data.seq_len  # Raises: required.
  data_dir = data.get("data_dir", (like.data_dir if like else None) or default_data_dir, kind=str)
  dataset = _dataset(data, inherited.get("dataset"))
  if "name" in dataset:
    sources.open_source(dataset["name"], split, data_dir, data_dir_key=data.path("data_dir"))  # Prepares, checks.
    _check_field(dataset, data_dir, data.path("field"))
  elif split not in documents.SPLITS:
    raise UserError(f"config key '{data.path('split')}' is '{split}'; files are split into "
                    f"{' and '.join(documents.SPLITS)}")
  if dataset.get("format") == "chat" and like is None and not _names_tokenizer(data):
    raise UserError(f"config key '{data.path('format')}' is 'chat', rendered with the model's chat template, but "
                    f"no '{data.path('tokenizer')}' path is set and a tokenizer trained here has no template; set "
                    f"it to the model's tokenizer (a Hugging Face directory with a chat template)")
  tokenizer = _tokenizer(data, dataset, data_dir, like)
  if dataset.get("format") == "chat" and tokenizer.chat_template is None:
    raise UserError(f"config key '{data.path('format')}' is 'chat', rendered with the model's chat template, but "
                    f"tokenizer {tokenizer.path} has none (no chat_template.jinja or tokenizer_config.json "
                    f"chat_template beside it); use the model's own tokenizer directory, or format "
                    f"'prompt_completion'")
  return _packed(dataset, split, tokenizer, seq_len, data_dir)


def _names_tokenizer(data):
  """Whether the section names a tokenizer file (rather than one to train)."""
  spec = data.get("tokenizer")
  return isinstance(spec, str) or (hasattr(spec, "get") and spec.get("path", kind=str) is not None)


def tokenizer_from_config(data):
  """The tokenizer that the data section `data` (a config Reader) names, or trains: what a
  run with this section as input.data tokenizes with."""
  return _tokenizer(data, _dataset(data, None), data.get("data_dir", kind=str), None)


def _dataset(data, inherited):
  """What to read, as a plain dict: {'name', 'field'} or {'format', 'files', ...}."""
  base = inherited if inherited and not any(key in data for key in ("name", "files", "format")) else {}
  name = data.get("name", base.get("name"), kind=str)
  files = data.get("files", base.get("files"))
  if name is not None and files is not None:
    raise UserError(f"set either '{data.path('name')}' (a TFDS dataset) or '{data.path('files')}', not both")
  if name is not None:
    return {"name": name, "field": data.get("field", base.get("field", "text"), kind=str)}
  if files is None:
    raise UserError(f"set '{data.path('name')}' (e.g. 'stdlib_code') or '{data.path('files')}' (your text files)")
  fmt = data.get("format", base.get("format", "text"), kind=str)
  if fmt not in documents.FORMATS:
    raise UserError(f"config key '{data.path('format')}' is '{fmt}', not a format; the formats are "
                    f"{', '.join(documents.FORMATS)}")
  fraction = data.get("validation_fraction", base.get("validation_fraction", 0.05), kind=float)
  if not 0 <= fraction < 1:
    raise UserError(f"config key '{data.path('validation_fraction')}' must be in [0, 1), got {fraction!r}")
  dataset = {"format": fmt, "files": files if files is base.get("files") else
             documents.resolve_files(files, f"config key '{data.path('files')}'", fmt), "validation_fraction": fraction}
  if fmt in mail.MBOX_FORMATS and files is not base.get("files"):
    for path in dataset["files"]:
      mail.check_mbox(path)
  if fmt == "jsonl":
    dataset["field"] = data.get("field", base.get("field", "text"), kind=str)
  elif fmt == "prompt_completion":
    dataset["prompt_field"] = data.get("prompt_field", base.get("prompt_field", "prompt"), kind=str)
    dataset["completion_field"] = data.get("completion_field", base.get("completion_field", "completion"), kind=str)
  elif fmt == "chat":
    dataset["messages_field"] = data.get("messages_field", base.get("messages_field", "messages"), kind=str)
  elif fmt == "mbox_replies" and data.get("replies_only", base.get("replies_only", False), kind=bool):
    dataset["replies_only"] = True  # Only when set: the default's cache keys stay as they were.
  if fmt in documents.TEMPLATE_FORMATS:
    choice = data.get("chat_template", base.get("chat_template", "auto"), kind=str)
    if choice not in CHAT_TEMPLATE_CHOICES:
      raise UserError(f"config key '{data.path('chat_template')}' is '{choice}'; it is 'auto' (the tokenizer's chat "
                      f"template where it has one) or 'none' (plain text)")
    if fmt == "chat" and choice == "none":
      raise UserError(f"config key '{data.path('chat_template')}' is 'none', but format 'chat' is rendered with the "
                      f"model's chat template; leave it 'auto', or use format 'prompt_completion' for plain text")
    if choice != "auto":  # Only a departure from the default is kept: default caches keep their keys.
      dataset["chat_template"] = choice
  return dataset


def check_files(data):
  """Finds and checks the files that a data section names, if any (see documents.resolve_files):
  a mixture checks every source's before it makes anything for one."""
  if "files" in data:
    _dataset(data, None)


def _tokenizer(data, dataset, data_dir, like):
  spec = data.get("tokenizer")
  if spec is None and like is not None:
    return like.tokenizer
  path, key = (spec, data.path("tokenizer")) if isinstance(spec, str) else (None, None)
  if spec is not None and not isinstance(spec, str):
    if not hasattr(spec, "get"):
      raise UserError(f"config key '{data.path('tokenizer')}' must be a path or a section, got {spec!r}")
    path, key = spec.get("path", kind=str), spec.path("path")
  if path is not None:
    if not os.path.exists(os.path.expanduser(path)):
      raise UserError(f"config key '{key}': tokenizer file {path} does not exist (unset it to train one)")
    return tokenizers.load(path)
  kind = spec.get("kind", DEFAULT_KIND, kind=str) if spec is not None else DEFAULT_KIND
  if kind not in tokenizers.KINDS:
    raise UserError(f"config key '{spec.path('kind')}' is '{kind}'; the kinds are {', '.join(tokenizers.KINDS)}")
  vocab_size = spec.get("vocab_size", DEFAULT_VOCAB_SIZE, minimum=260) if spec is not None else DEFAULT_VOCAB_SIZE
  return trained_tokenizer(dataset, kind, vocab_size, data_dir)


def trained_tokenizer(dataset, kind, vocab_size, data_dir=None):
  """The tokenizer of `kind` trained on the train split of `dataset`, cached under data_dir."""
  key = packing.cache_key(dataset=_identity(dataset, "train", data_dir), kind=kind, vocab_size=vocab_size,
                          chars=TOKENIZER_TRAINING_CHARS, **({"bos_first": True} if kind == "bpe" else {}))
  suffix = ".model" if kind == "sentencepiece" else ".json"
  path = os.path.join(_cache_root(data_dir), "tokenizers", f"{_slug(dataset)}-{kind}{vocab_size}-{key}{suffix}")

  def make():
    texts = training_texts(_documents(dataset, "train", data_dir))
    start = time.time()
    tokenizers.train(kind, texts, path, vocab_size)
    logging.info("Trained a %s tokenizer of %d tokens on %d characters of %s in %.1f s: %s", kind, vocab_size,
                 sum(map(len, texts)), _slug(dataset), time.time() - start, path)

  _process_zero_first(make, lambda: os.path.exists(path), f"tokenizer {key}")
  logging.info("Tokenizer: %s", path)
  return tokenizers.load(path)


def training_texts(docs, limit=TOKENIZER_TRAINING_CHARS):
  """Every text of `docs` (prompts and completions alike); every k-th beyond `limit` chars."""
  texts = [text for document in docs for text, _ in document if text]
  total = sum(map(len, texts))
  return texts[::-(-total // limit)] if total > limit else texts


def renders_chat(dataset, tokenizer):
  """Whether the documents of `dataset` are rendered with the tokenizer's chat template."""
  return (dataset.get("format") in documents.TEMPLATE_FORMATS and dataset.get("chat_template", "auto") == "auto"
          and tokenizer is not None and tokenizer.chat_template is not None)


def _template_key(tokenizer):
  """What a rendering depends on beyond the tokenizer file: the template and the tokens' text."""
  return packing.cache_key(template=tokenizer.chat_template, tokens=[tokenizer.token(r) for r in ("bos", "eos", "pad")])


def _packed(dataset, split, tokenizer, seq_len, data_dir):
  chat_key = {"chat": _template_key(tokenizer)} if renders_chat(dataset, tokenizer) else {}
  key = packing.cache_key(dataset=_identity(dataset, split, data_dir), split=split, tokenizer=tokenizer.fingerprint,
                          **chat_key)
  directory = os.path.join(_cache_root(data_dir), f"{_slug(dataset)}-{split}-{key}")

  def make():
    start = time.time()
    if chat_key:
      logging.info("Rendering the %s documents with the chat template of %s: the loss on the assistant's spans",
                   dataset["format"], tokenizer.path)
    stream, num_documents = packing.tokenize(tokenizer, _documents(dataset, split, data_dir, tokenizer))
    if not num_documents:
      fraction = f" (validation_fraction={dataset['validation_fraction']})" if "validation_fraction" in dataset else ""
      raise UserError(f"split '{split}' of {_slug(dataset)} has no documents{fraction}; add documents or change "
                      f"the fraction")
    seconds = time.time() - start
    packing.save_cached(directory, stream, {"num_documents": num_documents, "seconds": round(seconds, 2),
                                            "dataset": dataset, "split": split, "tokenizer": tokenizer.path})
    logging.info("Tokenized %s %s: %d documents, %d tokens in %.1f s; cached in %s", _slug(dataset), split,
                 num_documents, len(stream["tokens"]), seconds, directory)

  _process_zero_first(make, lambda: os.path.exists(os.path.join(directory, "meta.json")), f"packed {key}")
  stream, meta = packing.load_cached(directory)
  return packing.PackedSource(stream, seq_len=seq_len, tokenizer=tokenizer, num_documents=meta["num_documents"],
                              description=f"{_slug(dataset)} {split}", data_dir=data_dir,
                              options={"dataset": dataset, "seq_len": seq_len})


def _documents(dataset, split, data_dir, tokenizer=None):
  """The documents of a split, in a fixed order; rendered with `tokenizer`'s chat template
  where `renders_chat`."""
  if "name" in dataset:
    source = _builder(dataset["name"], data_dir).as_data_source(split=split)
    for start in range(0, len(source), 256):
      for example in source.__getitems__(list(range(start, min(start + 256, len(source))))):
        value = example[dataset["field"]]
        yield [(value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value), True)]
    return
  options = {k: dataset[k] for k in ("field", "prompt_field", "completion_field", "messages_field", "replies_only")
             if k in dataset}
  if renders_chat(dataset, tokenizer):
    options["render"] = functools.partial(chat.assistant_segments, tokenizer)
  for document in documents.read(dataset["format"], dataset["files"], **options):
    if documents.in_split(document, split, dataset["validation_fraction"]):
      yield document


def _builder(name, data_dir):
  return tfds.builder(name, data_dir=sources.data_dir_for(data_dir), file_format="array_record")


def _check_field(dataset, data_dir, key):
  features = _builder(dataset["name"], data_dir).info.features
  text = [k for k, f in features.items() if isinstance(f, tfds.features.Text)
          or (isinstance(f, tfds.features.Tensor) and f.shape == () and f.np_dtype in (np.object_, np.str_))]
  if dataset["field"] not in text:
    raise UserError(f"config key '{key}' is '{dataset['field']}', not a text feature of dataset "
                    f"'{dataset['name']}'; its text features are {', '.join(text) or 'none'}")


def _identity(dataset, split, data_dir):
  """What the documents of a split depend on, cheaply: for files their sizes and times,
  for TFDS the dataset's full name and the split's sizes."""
  if "name" in dataset:
    info = _builder(dataset["name"], data_dir).info
    return dict(dataset, full_name=info.full_name, split=split, examples=info.splits[split].num_examples,
                bytes=info.splits[split].num_bytes)
  stats = [(p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in dataset["files"]]
  return dict(dataset, files=stats, split=split)


def _slug(dataset):
  return dataset.get("name") or dataset["format"]


def _cache_root(data_dir):
  return os.path.join(sources.data_dir_for(data_dir), "jaxtrain_text")


def _process_zero_first(make, done, what):
  """`make()` unless `done()`: with several processes, process 0 first, the others after it
  (on a shared disk they find it done; on their own disk they make an identical copy)."""
  if jax.process_count() > 1:
    if jax.process_index() == 0 and not done():
      make()
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(f"jaxtrain: {what}")
  if not done():
    make()
