"""Tokenized documents packed into fixed-length rows: a random-access source for Grain.

Packing is concatenate-and-chunk. Each document becomes bos + tokens + eos; the documents
are joined in a fixed order into one token stream; row k is the stream's tokens
[k * seq_len, k * seq_len + seq_len + 1): consecutive rows overlap by one token, the last
target of a row being the first input of the next. So the inputs of the rows tile the
stream, and so do the targets: every token after the first is a target exactly once, which
is what an evaluation must count, and what makes the bytes of a split add up exactly. Only
the last row has padding. Why not first-fit packing of whole documents: most documents here
run to thousands of tokens (a stdlib file averages ~5,000), so they would be cut into rows
anyway, and first-fit would add padding, an ordering heuristic and O(n log n) work for little.

What a row holds (the contract: every key [seq_len]; batches add a leading axis):
  inputs, targets  int32    tokens[:-1], tokens[1:] of the row (padding: pad id, else eos)
  segment_ids      int32    1, 2, ... per document within the row; 0 for padding
  positions        int32    position within the document, 0 where it starts; a document
                            continued from the previous row restarts at 0 (positions stay
                            below seq_len, whatever the model's position encoding)
  weights          float32  1 where the target is the same document's next token and is
                            weighted text (all of it; for prompt/completion data only the
                            completion and the eos after it; for a chat template's rendering
                            only the assistant's spans, never packing's bos or eos), else 0
  bytes            float32  UTF-8 bytes of the original text that the weighted target
                            stands for (0 for bos, eos, padding, unweighted targets); over a
                            split they sum to the weighted text's bytes exactly
The rows are cut at read time from three per-token arrays (tokens, bytes, flags), which is
what is cached; so the cache does not depend on seq_len.

A document whose `special_tokens` attribute is true (documents.Rendered: a chat template's
rendering) is encoded as transformers' apply_chat_template(tokenize=True) encodes it: text
spelling a special token ('<|im_start|>') is that token; a special token's bytes are its
spelling's; the rendering is encoded whole, and a token is weighted where the byte it ends
on is in a weighted segment (SentencePiece would otherwise start each reply with a '▁' the
model never sees when prompted). Any other document's text is only text (data must not
inject control tokens).
Such a document gets packing's bos only where its own tokens do not already start with bos
(a template that writes bos_token, as Llama 3's does, would otherwise give two), and
packing's eos only where they do not already end with eos (Mistral's '</s>').
"""

import hashlib
import json
import os
import re
import shutil
import time

from absl import logging
import numpy as np

# Per-token flags in the stream.
START = 1     # The first token of a document (its bos).
WEIGHTED = 2  # Scored when it is the target of the previous token (same document).

CACHE_FORMAT = 1  # Bump when what is cached, or how, changes.
_BATCH_CHARS = 4_000_000  # Texts handed to the tokenizer at once (SentencePiece threads over them).


def tokenize(tokenizer, documents):
  """The token stream of `documents`, in order: {'tokens', 'bytes', 'flags'} arrays and the
  number of documents. A document is a list of (text, weighted) segments: [(text, True)] for
  plain text, [(prompt, False), (completion, True)] for a prompt/completion pair."""
  begin = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
  if begin is None or tokenizer.eos_id is None:
    raise ValueError(f"tokenizer {tokenizer.path} has no eos token (and no bos): documents cannot be delimited")
  parts = {"tokens": [], "bytes": [], "flags": []}
  num_documents = 0

  def flush(batch):
    special = [bool(getattr(document, "special_tokens", False)) for document in batch]
    plain = iter(tokenizer.encode_with_bytes([t for d, s in zip(batch, special) if not s for t, _ in d]))
    rendered_texts = ["".join(t for t, _ in d) for d, s in zip(batch, special) if s]
    whole = iter(encode_special(rendered_texts, tokenizer, exact_only=True) if rendered_texts else ())
    for document, rendered in zip(batch, special):
      lost = 0  # Bytes of weighted text that gave no token (a normalising tokenizer): to eos.
      if rendered:
        tokens, nbytes, flags = _weighed(document, next(whole), tokenizer)
      else:
        tokens, nbytes, flags = [], [], []
        for text, weighted in document:
          ids, counts = next(plain)
          tokens.append(ids)
          nbytes.append(counts if weighted else np.zeros_like(counts))
          flags.append(np.full(len(ids), WEIGHTED if weighted else 0, np.uint8))
          if weighted and not len(ids):
            lost += len(text.encode("utf-8", "surrogatepass"))
        tokens = np.concatenate(tokens) if tokens else np.zeros(0, np.int32)
        nbytes = np.concatenate(nbytes) if nbytes else np.zeros(0, np.int64)
        flags = np.concatenate(flags) if flags else np.zeros(0, np.uint8)
      if not (rendered and len(tokens) and tokens[0] == tokenizer.bos_id):
        tokens, nbytes, flags = np.append(begin, tokens), np.append(0, nbytes), np.append(0, flags)
      flags[0] |= START
      if not (rendered and len(tokens) > 1 and tokens[-1] == tokenizer.eos_id):
        eos_weighted = bool(document[-1][1]) and not rendered if document else False
        tokens, nbytes = np.append(tokens, tokenizer.eos_id), np.append(nbytes, lost)
        flags = np.append(flags, WEIGHTED if eos_weighted else 0)
      parts["tokens"].append(tokens.astype(np.int32))
      parts["bytes"].append(nbytes.astype(np.int64))
      parts["flags"].append(flags.astype(np.uint8))

  batch, chars = [], 0
  for document in documents:
    batch.append(document)
    num_documents += 1
    chars += sum(len(text) for text, _ in document)
    if chars >= _BATCH_CHARS:
      flush(batch)
      batch, chars = [], 0
  if batch:
    flush(batch)
  dtypes = {"tokens": np.int32, "bytes": np.uint32, "flags": np.uint8}
  stream = {key: np.concatenate(value).astype(dtypes[key]) if value else np.zeros(0, dtypes[key])
            for key, value in parts.items()}
  return stream, num_documents


def _weighed(document, encoded, tokenizer):
  """(tokens, bytes, flags) of a rendered conversation, encoded whole as the model reads it
  when prompted with it (and as apply_chat_template(tokenize=True) encodes it): a token is
  weighted where the byte it ends on lies in a weighted segment, and counts its bytes there.
  Where the token offsets are not exact (`encode_special`), each segment is encoded alone."""
  if encoded is None:
    parts = [(ids, counts, weighted) for (ids, counts), (_, weighted) in
             zip(encode_special([t for t, _ in document], tokenizer), document)]
  else:
    ids, counts = encoded
    bounds = np.cumsum([len(t.encode("utf-8", "surrogatepass")) for t, _ in document])
    ends = np.cumsum(counts)
    segment = np.minimum(np.searchsorted(bounds, np.maximum(ends - 1, 0), side="right"), len(document) - 1)
    weighted = np.asarray([w for _, w in document], bool)[segment] if len(document) else np.zeros(0, bool)
    parts = [(ids, counts, weighted)]
  tokens = np.concatenate([np.asarray(i, np.int32) for i, _, _ in parts] or [np.zeros(0, np.int32)])
  nbytes = np.concatenate([np.where(w, c, 0) for _, c, w in parts] or [np.zeros(0, np.int64)])
  flags = np.concatenate([np.broadcast_to(np.where(w, WEIGHTED, 0), np.shape(c)).astype(np.uint8)
                          for _, c, w in parts] or [np.zeros(0, np.uint8)])
  return tokens, nbytes, flags


def encode_special(texts, tokenizer, exact_only=False):
  """`tokenizer.encode_with_bytes(texts)` with text spelling a special token read as that token,
  the ids being `tokenizer.encode(text, special_tokens=True)`'s. The special tokens
  (`tokenizer.special_ids()`) are found in those ids; the text between them is encoded as
  data is, for its byte offsets. Where that does not give the same ids
  (a tokenizer that prefixes a space at the start of a text alone), the ids stand and the
  text's bytes go to its last token: bits per byte stay exact over a split (`exact_only`:
  None for such a text instead)."""
  special = tokenizer.special_ids()
  split = []  # Per text: its ids, and its pieces (text, or a special token's id).
  for text in texts:
    ids = [int(i) for i in tokenizer.encode(text, special_tokens=True)]
    spellings = {tokenizer.id_to_token(i): i for i in set(ids) if i in special}
    pattern = "|".join(map(re.escape, sorted(spellings, key=len, reverse=True))) or "(?!)"  # Longest first.
    pieces, start = [], 0
    for match in re.finditer(pattern, text):
      pieces += [text[start:match.start()], spellings[match.group()]]
      start = match.end()
    split.append((ids, pieces + [text[start:]]))
  plain = iter(tokenizer.encode_with_bytes([p for _, pieces in split for p in pieces if isinstance(p, str)]))
  results = []
  for text, (ids, pieces) in zip(texts, split):
    got_ids, got_bytes = [], []
    for piece in pieces:
      piece_ids, piece_bytes = next(plain) if isinstance(piece, str) else (
          [piece], [len(tokenizer.id_to_token(piece).encode("utf-8"))])
      got_ids += [int(i) for i in piece_ids]
      got_bytes += [int(b) for b in piece_bytes]
    if got_ids != ids:
      if exact_only:
        results.append(None)
        continue
      got_bytes = [0] * len(ids)
      if ids:
        got_bytes[-1] = len(text.encode("utf-8", "surrogatepass"))
    results.append((np.asarray(ids, np.int32), np.asarray(got_bytes, np.int64)))
  return results


class PackedSource:
  """Rows of `seq_len` tokens cut from a token stream: `len(src)`, `src.read(indices)`.

  Attributes: tokenizer, seq_len, num_documents, num_tokens (the stream's, bos and eos
  included), num_bytes (the weighted text's UTF-8 bytes), num_target_tokens (the weighted
  targets), and `description` (what it was made from, for logs)."""

  def __init__(self, stream, *, seq_len, tokenizer, num_documents, description="", options=None, data_dir=None):
    if seq_len < 2:
      raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    self.tokens, self.token_bytes, self.flags = stream["tokens"], stream["bytes"], stream["flags"]
    self.seq_len = seq_len
    self.tokenizer = tokenizer
    self.num_documents = num_documents
    self.num_tokens = len(self.tokens)
    weighted = (self.flags & WEIGHTED) != 0
    self.num_bytes = int(self.token_bytes[weighted].sum(dtype=np.int64))
    self.num_target_tokens = int(weighted.sum())
    self.description = description
    # What an evaluator opened `like=` this source inherits (see data.open_from_config).
    self.options = dict(options or {})
    self.data_dir = data_dir
    self._fill = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id

  def __len__(self):
    return max(0, -(-(self.num_tokens - 1) // self.seq_len))  # ceil((n - 1) / seq_len) rows.

  def __repr__(self):
    return (f"PackedSource({self.description}: {len(self)} rows of {self.seq_len}, {self.num_documents} documents, "
            f"{self.num_tokens} tokens, {self.num_bytes} bytes)")

  def read(self, indices):
    indices = np.asarray(indices, np.int64).reshape(-1)
    n, length = self.num_tokens, self.seq_len
    where = indices[:, None] * length + np.arange(length + 1)  # [B, L + 1] stream positions.
    valid = where < n
    where = np.minimum(where, n - 1)
    tokens = np.where(valid, self.tokens[where], self._fill).astype(np.int32)
    flags = np.where(valid, self.flags[where], 0)
    starts = (flags & START) != 0
    # A row that begins inside a document counts it as segment 1, from position 0.
    begins = starts.copy()
    begins[:, 0] = True
    segments = np.cumsum(begins, axis=1, dtype=np.int32) * valid
    column = np.arange(length + 1)
    positions = column - np.maximum.accumulate(np.where(begins, column, 0), axis=1)
    positions = (positions * valid).astype(np.int32)
    weights = (((flags[:, 1:] & WEIGHTED) != 0) & valid[:, 1:] & (segments[:, 1:] == segments[:, :-1]))
    target_bytes = np.where(weights, self.token_bytes[where[:, 1:]], 0)
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "segment_ids": segments[:, :-1],
        "positions": positions[:, :-1],
        "weights": weights.astype(np.float32),
        "bytes": target_bytes.astype(np.float32),
    }


# ---------------------------------------------------------------------------------------
# The cache: one directory per stream, written to a temporary name and renamed (atomic).
# ---------------------------------------------------------------------------------------


def cache_key(**what):
  """A hash of everything the stream depends on (JSON-able values)."""
  text = json.dumps(dict(what, cache_format=CACHE_FORMAT), sort_keys=True, default=str)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def load_cached(directory):
  """(stream, meta) from a cache directory, or None where there is none. Memory-mapped:
  opening takes milliseconds whatever the size."""
  meta_path = os.path.join(directory, "meta.json")
  if not os.path.exists(meta_path):
    return None
  with open(meta_path, encoding="utf-8") as f:
    meta = json.load(f)
  stream = {key: np.load(os.path.join(directory, f"{key}.npy"), mmap_mode="r") for key in ("tokens", "bytes", "flags")}
  return stream, meta


def save_cached(directory, stream, meta):
  """Writes the cache directory atomically; a copy another process finished first wins."""
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = f"{directory}.tmp.{os.getpid()}.{time.time_ns()}"
  os.makedirs(tmp)
  try:
    for key, array in stream.items():
      np.save(os.path.join(tmp, f"{key}.npy"), array)
    with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
      json.dump(meta, f, indent=1, sort_keys=True)
    try:
      os.rename(tmp, directory)
    except OSError:  # Already there (written by another process): keep theirs.
      if not os.path.exists(os.path.join(directory, "meta.json")):
        raise
      logging.info("Packed text cache %s was written by another process.", directory)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
