"""A GGUF file's tokenizer, in and out.

In: the vocabulary in the file's metadata becomes the files jaxtrain already reads, in a
cache directory named by a hash of that metadata (`$JAXTRAIN_CACHE`, default
~/.cache/jaxtrain, under gguf-tokenizers/):
- 'gpt2' (byte-level BPE: SmolLM2, Llama 3, Qwen): a tokenizer.json built with the
  `tokenizers` library from the tokens and merges; the pre-tokenizer that llama.cpp names
  in `tokenizer.ggml.pre` ('smollm', 'llama-bpe', 'qwen2', 'gpt-2'); control tokens as
  special tokens and user-defined ones as added tokens, as transformers' GGUF loader adds them.
- 'llama' (SentencePiece BPE: Llama 2, Mistral, TinyLlama): a SentencePiece model rebuilt
  from the tokens, scores and token types.
Beside it a tokenizer_config.json with the bos/eos/pad/unk tokens, add_bos_token and the
chat template. The '[PADn]' tokens that pad a vocabulary to the embedding's rows are left
out: the tokenizer never makes them, and decoding skips their ids, as the original did. So `tokenizers.load(directory)` reads it like any Hugging Face tokenizer, a
run keeps it like any other, and export writes it back.

Out (`write`): the same metadata from a tokenizer.json of byte-level BPE or a SentencePiece
BPE model. A SentencePiece unigram model (jaxtrain's default kind) has no GGUF form that
llama.cpp tokenizes alike, and is refused.
"""

import hashlib
import json
import os
import shutil
import tempfile

from jaxtrain.data import tokenizers
from jaxtrain.errors import UserError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # llama.cpp's token types.

# llama.cpp's pre-tokenizer names (llama-vocab.cpp) and the splits they stand for.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLITS = {"llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "smaug-bpe": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT,
          "deepseek-r1-qwen": _QWEN2_SPLIT}
PRE_NAMES = ("smollm", "gpt-2", "gpt2", "default") + tuple(SPLITS)
LLAMA3_NAMES = ("llama-bpe", "llama3", "smaug-bpe")
CONVERSION = 4  # The conversion's version, in the cache key.


def cache_root():
  return os.path.join(os.environ.get("JAXTRAIN_CACHE") or os.path.expanduser("~/.cache/jaxtrain"), "gguf-tokenizers")


def load(f):
  """The tokenizer of GGUF file `f` (a gguf.File), converted once and cached."""
  kind = f.value("tokenizer.ggml.model")
  if kind not in ("gpt2", "llama"):
    raise UserError(f"{f.path} has a '{kind}' tokenizer; jaxtrain reads 'gpt2' (byte-level BPE) and 'llama' "
                    f"(SentencePiece) vocabularies from GGUF")
  keys = ("model", "pre", "tokens", "token_type", "merges", "scores", "bos_token_id", "eos_token_id",
          "padding_token_id", "unknown_token_id", "add_bos_token", "add_space_prefix")
  meta = {key: f.value(f"tokenizer.ggml.{key}") for key in keys}
  meta["chat_template"] = f.value("tokenizer.chat_template")
  meta["arch"] = f.arch
  if not meta["tokens"]:
    raise UserError(f"{f.path} holds no tokenizer.ggml.tokens: it has no vocabulary to read")
  # The conversion's version is in the key: a fixed conversion makes new directories.
  key = hashlib.sha256(json.dumps([CONVERSION, meta], sort_keys=True, default=str).encode()).hexdigest()[:20]
  directory = os.path.join(cache_root(), key)
  if not os.path.isdir(directory):
    try:
      _convert(f.path, meta, directory)
    except OSError as e:
      raise UserError(f"cannot write {f.path}'s tokenizer in {cache_root()}: {e.strerror}; set $JAXTRAIN_CACHE to a "
                      f"writable directory") from None
  return tokenizers.load(directory)


def _convert(path, meta, directory):
  os.makedirs(os.path.dirname(directory), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".partial-", dir=os.path.dirname(directory))
  try:
    _write_directory(path, meta, tmp)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  try:
    os.replace(tmp, directory)
  except OSError:  # Another process converted the same vocabulary first: theirs is the same.
    shutil.rmtree(tmp, ignore_errors=True)


def _write_directory(path, meta, tmp):
  tokens, types = meta["tokens"], meta["token_type"] or [NORMAL] * len(meta["tokens"])
  size = len(tokens)
  while size and types[size - 1] == UNUSED and tokens[size - 1] == f"[PAD{size - 1}]":
    size -= 1  # The converter's padding up to the embedding's rows: no token of the tokenizer.
  tokens, types = tokens[:size], types[:size]
  if meta["scores"]:
    meta = dict(meta, scores=meta["scores"][:size])
  if meta["model"] == "gpt2":
    _write_bpe(path, meta, tokens, types, os.path.join(tmp, "tokenizer.json"))
    # Unrecorded, llama.cpp adds BOS for Llama 3's pre-tokenizers and for no other BPE vocabulary.
    add_bos = meta["add_bos_token"] if meta["add_bos_token"] is not None else meta["pre"] in LLAMA3_NAMES
  else:
    _write_sentencepiece(meta, tokens, types, os.path.join(tmp, "tokenizer.model"))
    add_bos = meta["add_bos_token"] is not False  # llama.cpp's default for SentencePiece: BOS.
  config = {f"{role}_token": tokens[meta[key]] for role, key in
            (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id"),
             ("unk", "unknown_token_id")) if isinstance(meta[key], int) and meta[key] < len(tokens)}
  config.update(add_bos_token=add_bos, add_eos_token=False)
  if meta["chat_template"]:
    config["chat_template"] = meta["chat_template"]
  with open(os.path.join(tmp, "tokenizer_config.json"), "w", encoding="utf-8") as out:
    json.dump(config, out, indent=2, sort_keys=True)


def _write_bpe(path, meta, tokens, types, out):
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors  # pylint: disable=import-outside-toplevel
  pre = meta["pre"] or "gpt-2"
  if pre == "smollm":  # Digits one by one, then GPT-2's split: SmolLM's own tokenizer.json.
    pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
  elif pre in ("gpt-2", "gpt2", "default"):
    pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  elif pre in SPLITS:
    pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(SPLITS[pre]), behavior="isolated"),
                                             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  else:
    raise UserError(f"{path} splits text as llama.cpp's '{pre}' pre-tokenizer, which jaxtrain does not know "
                    f"(it knows {', '.join(PRE_NAMES)}); load the Hugging Face directory instead")
  merges = [tuple(m.split(" ", 1)) for m in meta["merges"] or []]
  # Llama 3 takes a whole word that is a token as that token before merging (its tokenizer.json
  # and llama.cpp's 'llama-bpe' alike): ignore_merges.
  tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                             ignore_merges=pre in LLAMA3_NAMES))
  tok.pre_tokenizer = pre_tokenizer
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == CONTROL])
  tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == USER_DEFINED])
  bos = meta["bos_token_id"]
  if (meta["add_bos_token"] or (meta["add_bos_token"] is None and pre in LLAMA3_NAMES)) and isinstance(bos, int):  # In the file itself: any reader of it adds BOS.
    tok.post_processor = processors.TemplateProcessing(single=f"{tokens[bos]} $A", pair=f"{tokens[bos]} $A $B",
                                                       special_tokens=[(tokens[bos], bos)])
  tok.save(out)


def _write_sentencepiece(meta, tokens, types, out):
  from sentencepiece import sentencepiece_model_pb2 as pb  # pylint: disable=import-outside-toplevel
  model = pb.ModelProto()
  scores = meta["scores"] or [0.0] * len(tokens)
  kinds = {NORMAL: pb.ModelProto.SentencePiece.NORMAL, UNKNOWN: pb.ModelProto.SentencePiece.UNKNOWN,
           CONTROL: pb.ModelProto.SentencePiece.CONTROL, USER_DEFINED: pb.ModelProto.SentencePiece.USER_DEFINED,
           UNUSED: pb.ModelProto.SentencePiece.UNUSED, BYTE: pb.ModelProto.SentencePiece.BYTE}
  unk = meta["unknown_token_id"]
  types = [UNKNOWN if i == unk and k == CONTROL else k for i, k in enumerate(types)]  # Gemma's <unk> is CONTROL.
  for token, score, kind in zip(tokens, scores, types):
    if kind == USER_DEFINED and token and not token.strip(" "):
      # llama.cpp matches user-defined tokens in the raw text, so a run of '▁' is stored as spaces (Gemma's).
      token = "\u2581" * len(token)
    model.pieces.add(piece=token, score=score, type=kinds.get(kind, pb.ModelProto.SentencePiece.NORMAL))
  spec = model.trainer_spec
  spec.model_type = pb.TrainerSpec.BPE
  spec.vocab_size = len(tokens)
  spec.byte_fallback = BYTE in types
  for field, key in (("bos_id", "bos_token_id"), ("eos_id", "eos_token_id"), ("pad_id", "padding_token_id"),
                     ("unk_id", "unknown_token_id")):
    value = meta[key]
    usable = isinstance(value, int) and value < len(types) and types[value] in (CONTROL, UNKNOWN)
    setattr(spec, field, value if usable else -1)
    if usable:  # SentencePiece finds a role's id by its piece, '<s>' unless told: Gemma's is '<bos>'.
      setattr(spec, field.replace("_id", "_piece"), tokens[value])
  if spec.unk_id < 0:
    spec.unk_id = next((i for i, k in enumerate(types) if k == UNKNOWN), 0)
  norm = model.normalizer_spec
  norm.name, norm.add_dummy_prefix = "identity", meta["add_space_prefix"] is not False
  norm.remove_extra_whitespaces, norm.escape_whitespaces = False, True
  with open(out, "wb") as f:
    f.write(model.SerializeToString())


# ---------------------------------------------------------------------------------------
# Writing.
# ---------------------------------------------------------------------------------------


def fields(tokenizer, vocab_size):
  """The GGUF metadata of `tokenizer` ([(GGUFWriter method, value)]), listing `vocab_size`
  tokens (the embedding's rows: llama.cpp refuses a file whose token list is shorter; the
  rows past the tokenizer's ids are '[PADn]' tokens of type UNUSED, as llama.cpp's converter
  writes them). One line for a tokenizer that has no GGUF form: called before any work."""
  out = []
  if tokenizer.kind == "sentencepiece":
    _add_sentencepiece(out, tokenizer, vocab_size)
  else:
    _add_bpe(out, tokenizer, vocab_size)
  for role, method in (("bos", "add_bos_token_id"), ("eos", "add_eos_token_id"), ("pad", "add_pad_token_id")):
    if getattr(tokenizer, f"{role}_id") is not None:
      out.append((method, getattr(tokenizer, f"{role}_id")))
  out += [("add_add_bos_token", bool(tokenizer.adds_bos)), ("add_add_eos_token", False)]
  if tokenizer.chat_template:
    out.append(("add_chat_template", tokenizer.chat_template))
  return out


def write(writer, vocabulary):
  """Adds `fields`' metadata to a gguf.GGUFWriter."""
  for method, value in vocabulary:
    getattr(writer, method)(value)


def _padded(tokens, types, vocab_size, scores=None):
  """The lists extended to `vocab_size` entries with llama.cpp's padding tokens."""
  extra = range(len(tokens), vocab_size)
  tokens = tokens + [f"[PAD{i}]" for i in extra]
  types = types + [UNUSED] * len(extra)
  return (tokens, types) if scores is None else (tokens, types, scores + [-1000.0] * len(extra))


def _add_bpe(out, tokenizer, vocab_size):
  with open(tokenizer.path, encoding="utf-8") as f:
    spec = json.load(f)
  model = spec.get("model") or {}
  if model.get("type") != "BPE" or not _is_byte_level(spec.get("decoder")):
    raise UserError(f"{tokenizer.path} is not a byte-level BPE tokenizer, the kind llama.cpp's 'gpt2' vocabulary "
                    f"holds; it has no GGUF form")
  size = tokenizer.vocab_size
  tokens = [tokenizer.id_to_token(i) for i in range(size)]
  if None in tokens:
    raise UserError(f"{tokenizer.path} leaves token id {tokens.index(None)} unassigned; GGUF lists every id")
  types = [NORMAL] * size
  for added in spec.get("added_tokens") or []:
    types[added["id"]] = CONTROL if added.get("special") else USER_DEFINED
  merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
  tokens, types = _padded(tokens, types, vocab_size)
  out.append(("add_tokenizer_model", "gpt2"))
  out.append(("add_tokenizer_pre", _pre_name(spec.get("pre_tokenizer"), tokenizer.path)))
  out.append(("add_token_list", tokens))
  out.append(("add_token_types", types))
  out.append(("add_token_merges", merges))


def _is_byte_level(part):
  if not part:
    return False
  if part.get("type") == "Sequence":
    return any(_is_byte_level(p) for p in part.get("decoders") or part.get("pretokenizers") or [])
  return part.get("type") == "ByteLevel"


def _pre_name(pre, path):
  """llama.cpp's name for a tokenizer.json's pre-tokenizer."""
  parts = (pre.get("pretokenizers") or []) if pre and pre.get("type") == "Sequence" else [pre] if pre else []
  kinds = [p.get("type") for p in parts]
  if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
    return "gpt-2"
  if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
    return "smollm"
  if kinds == ["Split", "ByteLevel"]:
    pattern = (parts[0].get("pattern") or {}).get("Regex")
    for name, split in SPLITS.items():
      if pattern == split:
        return name
  raise UserError(f"{path} splits text in a way llama.cpp has no name for ({' + '.join(map(str, kinds))}); "
                  f"it has no GGUF form")


def _add_sentencepiece(out, tokenizer, vocab_size):
  from sentencepiece import sentencepiece_model_pb2 as pb  # pylint: disable=import-outside-toplevel
  model = pb.ModelProto()
  with open(tokenizer.path, "rb") as f:
    model.ParseFromString(f.read())
  if model.trainer_spec.model_type != pb.TrainerSpec.BPE:
    raise UserError(f"{tokenizer.path} is a SentencePiece unigram model, which llama.cpp's 'llama' vocabulary would "
                    f"tokenize differently; train the run with input.data.tokenizer.kind='bpe' (or a SentencePiece BPE "
                    f"model) to export it to GGUF")
  kinds = {pb.ModelProto.SentencePiece.NORMAL: NORMAL, pb.ModelProto.SentencePiece.UNKNOWN: UNKNOWN,
           pb.ModelProto.SentencePiece.CONTROL: CONTROL, pb.ModelProto.SentencePiece.USER_DEFINED: USER_DEFINED,
           pb.ModelProto.SentencePiece.UNUSED: UNUSED, pb.ModelProto.SentencePiece.BYTE: BYTE}
  pieces = [" " * len(p.piece) if p.type == pb.ModelProto.SentencePiece.USER_DEFINED and not p.piece.strip("\u2581")
            else p.piece for p in model.pieces]  # Runs of '▁' as spaces again, as llama.cpp matches them.
  tokens, types, scores = _padded(pieces, [kinds[p.type] for p in model.pieces], vocab_size,
                                  [p.score for p in model.pieces])
  out.append(("add_tokenizer_model", "llama"))
  out.append(("add_tokenizer_pre", "default"))
  out.append(("add_token_list", tokens))
  out.append(("add_token_scores", scores))
  out.append(("add_token_types", types))
  out.append(("add_add_space_prefix", model.normalizer_spec.add_dummy_prefix))
  if model.trainer_spec.unk_id >= 0:
    out.append(("add_unk_token_id", model.trainer_spec.unk_id))
