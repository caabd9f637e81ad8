"""Tokenizers behind one small interface: SentencePiece `.model` files and Hugging Face
`tokenizer.json` files; training both kinds, deterministically and losslessly.

    tok = tokenizers.load("spm.model")           # or ".../tokenizer.json", or a directory
    ids = tok.encode("def f(x):\n    return x")  # no bos/eos: packing adds them
    tok.decode(ids)                              # the text back, byte for byte
    tok.encode_with_bytes(texts)                 # ids and the UTF-8 bytes each id stands for
    tok.encode(prompt, special_tokens=True)      # '<|im_start|>' in a prompt: that token's id
    tok.adds_bos                                 # whether BOS goes before a prompt

Text that spells a special token ('<s>', '<|im_start|>') is plain text by default: training
data must not inject control tokens (a mailbox quoting a chat transcript) and
decode(encode(x)) == x. Prompts (generation, lm_eval contexts) pass special_tokens=True:
such text becomes the token, as transformers encodes it. `adds_bos` is what transformers
would put first: a tokenizer.json's post-processor decides (Llama's TemplateProcessing adds
BOS, SmolLM2's file none), a SentencePiece model adds BOS (LlamaTokenizer's default), and
an explicit add_bos_token in a tokenizer_config.json beside the file wins over both.

`encode_with_bytes` is what makes bits per byte exact and comparable across tokenizers:
every byte of a text is attributed to exactly one of its tokens, taken from the library's
own offsets (SentencePiece's byte offsets; the `tokenizers` library's character offsets
converted to bytes). Where several tokens share one character (SentencePiece's byte
fallback, byte-level BPE), the character's bytes go to the one that completes it
(SentencePiece) or the first one that reaches it (`tokenizers`): once either way.

Training (measured on stdlib_code's train split: 656 files, 10.6 MB; 2 shared cores; vocab
4096; `python scripts/train_tokenizer.py`):
- `train_sentencepiece`: unigram by default (the T5/seqio standard), identity
  normalisation, no dummy prefix, no whitespace collapsing, byte fallback, split digits,
  whitespace-only pieces ('▁▁▁▁' for an indent, '\n\n'): decode(encode(x)) == x on all 656
  files. Unigram: 47-77 s (load-dependent), 3.22 M tokens (3.29 bytes per token);
  model_type='bpe': 2.5 s, 3.20 M tokens. Deterministic only with a fixed thread count: the
  unigram EM sums per-thread results, so 1 and 2 threads give different models (two runs
  with the same count give the same bytes); it always trains on 1 thread.
- `train_bpe`: byte-level BPE with the `tokenizers` library (GPT-2's pre-tokenising regex,
  digits split one by one as for SentencePiece): 2.2 s, 3.11 M tokens (3.41 bytes per
  token), lossless on all 656 files; the same file bytes on every run and for any number of
  threads (RAYON_NUM_THREADS=1 or 2).
"""

import hashlib
import io
import json
import os
import re

import numpy as np

from jaxtrain.errors import UserError, first_line

KINDS = ("sentencepiece", "bpe")
# Our tokenizers' special tokens; ids 0, 1, 2 (SentencePiece adds <unk> at 3).
PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
# SentencePiece skips training sentences longer than max_sentence_length bytes: texts are
# cut at line ends into pieces of at most this many characters (4 bytes each at worst).
_CHUNK_CHARS = 8192


class Tokenizer:
  """The interface: encode, decode, encode_with_bytes; bos_id, eos_id, pad_id (None where
  the model has none), vocab_size; path, kind and fingerprint (sha256 of the file bytes)."""

  kind = None
  file_name = None  # Its name in a Hugging Face directory: 'tokenizer.model' or 'tokenizer.json'.
  adds_bos = False  # Whether BOS goes before a prompt, as transformers would put it (see above).
  chat_template = None  # The model's Jinja chat template (str), where it has one: see data/chat.py.

  def __init__(self, path):
    self.path = path
    with open(path, "rb") as f:
      self.fingerprint = hashlib.sha256(f.read()).hexdigest()
    self._config = _read_config(os.path.join(os.path.dirname(path), "tokenizer_config.json"))
    self.chat_template = _chat_template(os.path.dirname(path), self._config)

  def token(self, role):
    """The text of the 'bos', 'eos' or 'pad' token ('<|im_end|>'), or None where there is none."""
    i = getattr(self, f"{role}_id")
    return None if i is None else self.id_to_token(i)

  def __repr__(self):
    return f"{type(self).__name__}({self.path!r}, vocab_size={self.vocab_size})"

  def _config_adds_bos(self, default):
    """An explicit add_bos_token in tokenizer_config.json, else `default`; never without a BOS."""
    explicit = (self._config or {}).get("add_bos_token")
    return self.bos_id is not None and (explicit if isinstance(explicit, bool) else default)

  def encode(self, text, special_tokens=False):
    """The ids of `text` (a str), without bos or eos. `special_tokens=True` (prompts): text
    that spells a special token becomes its id; False (training data): it is text."""
    raise NotImplementedError

  def decode(self, ids):
    """The text of `ids`; special tokens (bos, eos, pad) are dropped."""
    raise NotImplementedError

  def special_ids(self):
    """The ids that text spelling them becomes under `encode(text, special_tokens=True)`."""
    raise NotImplementedError

  def id_to_token(self, i):
    """The vocabulary entry of id `i` ('<s>', '▁def', 'Ġdef')."""
    raise NotImplementedError

  def encode_with_bytes(self, texts):
    """For each text: (ids int32 [n], bytes int64 [n]), bytes summing to len(text.encode())."""
    raise NotImplementedError


def token_bytes(ends, total):
  """The bytes each token stands for, from the byte offsets where the tokens end.

  A token gets the bytes from the furthest end reached before it to its own end, so a
  character shared by several tokens counts once, and a token whose text was dropped by
  normalisation counts 0; whatever is left at the end (trimmed offsets) goes to the last
  token. The sum is `total` exactly whenever there is a token."""
  ends = np.minimum(np.maximum.accumulate(np.asarray(ends, np.int64)), total) if len(ends) else np.zeros(0, np.int64)
  counts = np.diff(ends, prepend=0)
  if len(counts):
    counts[-1] += total - ends[-1]
  return counts


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece `.model` file (T5X / seqio / Llama 2 `tokenizer.model`)."""

  kind = "sentencepiece"
  file_name = "tokenizer.model"  # Its name in a Hugging Face directory (and a run's copy).

  def __init__(self, path):
    import sentencepiece as spm  # pylint: disable=import-outside-toplevel
    super().__init__(path)
    try:
      self._sp = spm.SentencePieceProcessor(model_file=path)
    except (OSError, RuntimeError) as e:
      raise UserError(f"cannot load SentencePiece model {path}: {first_line(e)}") from None
    none_if_negative = lambda i: i if i >= 0 else None  # noqa: E731
    self.bos_id = none_if_negative(self._sp.bos_id())
    self.eos_id = none_if_negative(self._sp.eos_id())
    self.pad_id = none_if_negative(self._sp.pad_id())
    self.vocab_size = self._sp.get_piece_size()
    self.adds_bos = self._config_adds_bos(True)  # As transformers' LlamaTokenizer (add_bos_token=True).
    self._special = None  # {piece: id} of the control and unknown pieces, and a regex of them: when first needed.

  def _special_pieces(self):
    if self._special is None:
      sp = self._sp
      pieces = {sp.id_to_piece(i): i for i in range(self.vocab_size) if sp.is_control(i) or sp.is_unknown(i)}
      self._special = pieces, re.compile("|".join(map(re.escape, sorted(pieces, key=len, reverse=True))))
    return self._special

  def special_ids(self):
    return set(self._special_pieces()[0].values())

  def encode(self, text, special_tokens=False):
    if not special_tokens:  # SentencePiece itself never matches control pieces in text.
      return self._sp.encode(text, add_bos=False, add_eos=False)
    pieces, pattern = self._special_pieces()
    # As transformers' LlamaTokenizer: split at the special pieces, encode the text between.
    ids, start = [], 0
    for match in pattern.finditer(text) if pieces else ():
      ids += self._sp.encode(text[start:match.start()], add_bos=False, add_eos=False) + [pieces[match.group()]]
      start = match.end()
    return ids + self._sp.encode(text[start:], add_bos=False, add_eos=False)

  def decode(self, ids):
    return self._sp.decode([int(i) for i in ids])

  def id_to_token(self, i):
    return self._sp.id_to_piece(int(i))

  def encode_with_bytes(self, texts):
    # Byte offsets into each text's UTF-8. A character spelled with byte-fallback pieces
    # shows as (1, 1), (1, 1), (1, 4): it goes to the last piece.
    texts = list(texts)
    threads = os.cpu_count() or 1
    try:  # sentencepiece 0.2.3 (checked): 'offset_mapping', with return_bytes for byte offsets.
      out = self._sp.encode(texts, out_type="offset_mapping", return_bytes=True, add_bos=False, add_eos=False,
                            num_threads=threads)
      encoded = [(e["ids"], np.asarray(e["offsets"], np.int64).reshape(-1, 2)[:, 1]) for e in out]
    except (TypeError, ValueError):  # Older releases: immutable protos, the same byte offsets (not run here).
      out = self._sp.encode(texts, out_type="immutable_proto", add_bos=False, add_eos=False, num_threads=threads)
      encoded = [([p.id for p in e.pieces], np.array([p.end for p in e.pieces], np.int64)) for e in out]
    return [(np.asarray(ids, np.int32), token_bytes(ends, _utf8_len(text)))
            for text, (ids, ends) in zip(texts, encoded)]


class HuggingFaceTokenizer(Tokenizer):
  """A Hugging Face `tokenizer.json` (the `tokenizers` library); bos/eos/pad come from a
  `tokenizer_config.json` beside it where there is one, else from the usual token names."""

  kind = "huggingface"
  file_name = "tokenizer.json"
  _NAMES = {"bos": ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>"),
            "eos": ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "<|im_end|>"),
            "pad": ("<pad>", "[PAD]", "<|pad|>", "<|padding|>")}

  def __init__(self, path):
    from tokenizers import Tokenizer as HFTokenizer  # pylint: disable=import-outside-toplevel
    super().__init__(path)
    try:
      self._tok = HFTokenizer.from_file(path)
    except Exception as e:  # pylint: disable=broad-except  (the library raises bare Exceptions)
      raise UserError(f"cannot load Hugging Face tokenizer {path}: {first_line(e)}") from None
    # Data: text that spells a special token ('<s>' in a stdlib file) is text, not that
    # token: otherwise decode(encode(x)) drops it (2 of the stdlib's train files) and data
    # could inject document boundaries. Prompts parse them, with a second instance
    # (`_prompt_tok`): the flag is the instance's, and data may be encoded on other threads.
    self._tok.encode_special_tokens = True
    self._prompt_tok = None
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    special = self._special_tokens()
    self.bos_id, self.eos_id, self.pad_id = (special.get(role) for role in ("bos", "eos", "pad"))
    # Its post-processor's choice (`encode` itself never adds special tokens).
    first = self._tok.encode("a", add_special_tokens=True).ids[:1]
    self.adds_bos = self._config_adds_bos(first == [self.bos_id])

  def _special_tokens(self):
    found = {}
    if self._config is not None:
      for role in self._NAMES:
        token = self._config.get(f"{role}_token")
        token = token.get("content") if isinstance(token, dict) else token
        if isinstance(token, str) and self._tok.token_to_id(token) is not None:
          found[role] = self._tok.token_to_id(token)
      return found
    for role, names in self._NAMES.items():
      ids = [self._tok.token_to_id(name) for name in names]
      found[role] = next((i for i in ids if i is not None), None)
    return found

  def encode(self, text, special_tokens=False):
    if not special_tokens:
      return self._tok.encode(text, add_special_tokens=False).ids
    if self._prompt_tok is None:
      from tokenizers import Tokenizer as HFTokenizer  # pylint: disable=import-outside-toplevel
      self._prompt_tok = HFTokenizer.from_file(self.path)  # encode_special_tokens=False: transformers' default.
    return self._prompt_tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids):
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

  def special_ids(self):
    return set(self._tok.get_added_tokens_decoder())  # Added tokens: matched whole in a prompt's text.

  def id_to_token(self, i):
    return self._tok.id_to_token(int(i))

  def encode_with_bytes(self, texts):
    # Offsets are in characters; a byte-level token holding part of a character gets the
    # whole character's span, e.g. '€' as three tokens: (1, 2), (1, 2), (1, 2): the first.
    texts = list(texts)
    results = []
    for text, encoding in zip(texts, self._tok.encode_batch(texts, add_special_tokens=False)):
      ids = np.asarray(encoding.ids, np.int32)
      ends = np.asarray(encoding.offsets, np.int64).reshape(-1, 2)[:, 1]
      if not text.isascii():
        ends = _char_to_byte_offsets(text)[ends]
      results.append((ids, token_bytes(ends, _utf8_len(text))))
    return results


def _read_config(path):
  """The tokenizer_config.json at `path` as a dict (None where there is none)."""
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise UserError(f"{path} is not valid JSON ({first_line(e)}); fix it or remove it") from None
  if not isinstance(config, dict):
    raise UserError(f"{path} holds a JSON {type(config).__name__}, not an object; fix it or remove it")
  return config


def _chat_template(directory, config):
  """A Hugging Face directory's chat template, where transformers finds it: chat_template.jinja
  (transformers >= 4.43 saves it there), else tokenizer_config.json's chat_template (a str,
  or a list of named templates, of which 'default')."""
  path = os.path.join(directory, "chat_template.jinja")
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      return f.read()
  template = (config or {}).get("chat_template")
  if isinstance(template, list):
    named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
    template = named.get("default")
  return template if isinstance(template, str) else None


def _utf8_len(text):
  return len(text.encode("utf-8", "surrogatepass"))


def _char_to_byte_offsets(text):
  """[len(text) + 1]: the UTF-8 byte offset of each character offset."""
  codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
  sizes = 1 + (codes >= 0x80) + (codes >= 0x800) + (codes >= 0x10000)
  return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])


def load(path):
  """A tokenizer from a file: `.model` (SentencePiece) or `.json` (Hugging Face), or from a
  directory holding `tokenizer.json` or `tokenizer.model` (a Hugging Face model dir)."""
  path = os.path.expanduser(path)
  if os.path.isdir(path):
    for name in ("tokenizer.json", "tokenizer.model", "spiece.model"):
      if os.path.exists(os.path.join(path, name)):
        return load(os.path.join(path, name))
    raise UserError(f"tokenizer directory {path} holds no tokenizer.json, tokenizer.model or spiece.model")
  if not os.path.exists(path):
    raise UserError(f"tokenizer file {path} does not exist; give a SentencePiece .model or a tokenizer.json, "
                    f"or leave the path unset to train one")
  with open(path, "rb") as f:
    head = f.read(64).lstrip()
  return HuggingFaceTokenizer(path) if head.startswith(b"{") else SentencePieceTokenizer(path)


# ---------------------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------------------


def train(kind, texts, path, vocab_size):
  """Trains a tokenizer of `kind` ('sentencepiece' or 'bpe') and returns it, loaded."""
  if kind == "sentencepiece":
    train_sentencepiece(texts, path, vocab_size)  # Its `adds_bos` is True, as LlamaTokenizer's.
  elif kind == "bpe":
    # A run's documents start with BOS (packing): the tokenizer says so, so that generation,
    # lm_eval and transformers after export start a prompt as training started a document.
    train_bpe(texts, path, vocab_size, bos_first=True)
  else:
    raise UserError(f"unknown tokenizer kind '{kind}'; the kinds are {', '.join(KINDS)}")
  return load(path)


def _chunks(texts):
  """Texts cut at line ends into pieces of at most _CHUNK_CHARS characters ('\n' kept)."""
  for text in texts:
    chunk = []
    size = 0
    for line in text.splitlines(keepends=True):
      for start in range(0, len(line), _CHUNK_CHARS):  # A longer line is cut anywhere.
        part = line[start:start + _CHUNK_CHARS]
        if size + len(part) > _CHUNK_CHARS and chunk:
          yield "".join(chunk)
          chunk, size = [], 0
        chunk.append(part)
        size += len(part)
    if chunk:
      yield "".join(chunk)


def train_sentencepiece(texts, path, vocab_size, model_type="unigram"):
  """Trains a lossless SentencePiece model on `texts` (strs) and writes it to `path`.

  Lossless on code: nothing is normalised, spaces and newlines are kept (runs of spaces may
  be pieces of their own), characters outside the 99.95% coverage are spelled in bytes.
  Deterministic: one thread, every sentence (no sampling), no file names in the model."""
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=_chunks(texts), model_writer=model, vocab_size=vocab_size, model_type=model_type,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
        byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True, character_coverage=0.9995,
        pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece=PAD, bos_piece=BOS, eos_piece=EOS, unk_piece=UNK,
        max_sentence_length=4 * _CHUNK_CHARS, input_sentence_size=0, num_threads=1, minloglevel=2)
  except RuntimeError as e:  # E.g. "Vocabulary size too high (8000). Please set it to a value <= 1234."
    why = first_line(e).rpartition("] ")[2]  # Without "INTERNAL: src/trainer_interface.cc(638) [condition]".
    raise UserError(f"training a SentencePiece tokenizer of vocab_size {vocab_size} failed: {why}") from None
  _write_atomically(path, model.getvalue())


def train_bpe(texts, path, vocab_size, bos_first=False):
  """Trains a byte-level BPE tokenizer (the `tokenizers` library) and writes its
  tokenizer.json to `path`. Lossless (every byte is a token) and deterministic. With
  `bos_first`, its post-processor puts BOS before a sequence (as Llama's tokenizer.json do)."""
  from tokenizers import Tokenizer as HFTokenizer  # pylint: disable=import-outside-toplevel
  from tokenizers import decoders, models, pre_tokenizers, processors, trainers  # pylint: disable=import-outside-toplevel
  tok = HFTokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
  tok.decoder = decoders.ByteLevel()
  minimum = 256 + 3
  if vocab_size < minimum:
    raise UserError(f"a byte-level BPE tokenizer needs vocab_size >= {minimum} (256 bytes and 3 special tokens), "
                    f"got {vocab_size}")
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[PAD, BOS, EOS],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(texts, trainer)
  if bos_first:
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, tok.token_to_id(BOS))])
  _write_atomically(path, tok.to_str().encode("utf-8"))


def _write_atomically(path, data):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)
