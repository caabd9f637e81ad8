"""Tests for text data: tokenizers, stdlib_code, the user's files (text, JSONL, prompt /
completion, mbox), packing into rows, the cache, config keys and errors, the xz baseline."""

import email.message
import hashlib
import json
import mailbox
import os

import numpy as np
import pytest

from jaxtrain.config import Reader, check_all_read
from jaxtrain import data
from jaxtrain.data import documents
from jaxtrain.data import packing
from jaxtrain.data import stdlib_code
from jaxtrain.data import text
from jaxtrain.data import tokenizers
from jaxtrain.errors import UserError

KINDS = ("sentencepiece", "bpe")
# Small stdlib files (100 KB in all) to train tiny tokenizers on, in a fraction of a second.
TRAIN_FILES = ("string.py", "json/encoder.py", "email/quoprimime.py", "email/base64mime.py", "colorsys.py",
               "keyword.py", "heapq.py", "fnmatch.py", "shlex.py", "this.py", "tabnanny.py")
HARD_TEXT = "naïve café — 日本語 😀 €\u0301 ﷽\t\t  x = 12345\r\n\x00\n\n        <s>end</s><pad>  "


def read_stdlib(relpath):
  with open(os.path.join(stdlib_code.stdlib_dir(), relpath), encoding="utf-8") as f:
    return f.read()


@pytest.fixture(scope="session")
def train_texts():
  return [read_stdlib(name) for name in TRAIN_FILES]


@pytest.fixture(scope="session")
def tokenizer_paths(tmp_path_factory, train_texts):
  """A 400-token tokenizer of each kind, trained on TRAIN_FILES."""
  directory = tmp_path_factory.mktemp("tokenizers")
  paths = {"sentencepiece": str(directory / "spm.model"), "bpe": str(directory / "tokenizer.json")}
  tokenizers.train_sentencepiece(train_texts, paths["sentencepiece"], 400)
  tokenizers.train_bpe(train_texts, paths["bpe"], 400)
  return paths


@pytest.fixture(scope="session", params=KINDS)
def tok(request, tokenizer_paths):
  return tokenizers.load(tokenizer_paths[request.param])


def reader(**section):
  return Reader({"input": {"data": section}})


def open_text(**section):
  cfg = reader(**section)
  source = data.open_from_config(cfg.input.data)
  check_all_read(cfg)  # Every key given was read.
  return source


def read_all(source):
  return source.read(np.arange(len(source)))


def write_jsonl(path, records):
  path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
  return str(path)


class CharTokenizer:
  """One token per character (id = code point + 3): rows can be checked by hand."""

  path, bos_id, eos_id, pad_id, fingerprint = "chars", 1, 2, 0, "chars"

  def encode_with_bytes(self, texts):
    return [(np.array([ord(c) + 3 for c in t], np.int32), np.array([len(c.encode()) for c in t], np.int64))
            for t in texts]


# ---------------------------------------------------------------------------------------
# Tokenizers.
# ---------------------------------------------------------------------------------------


def test_tokenizers_are_lossless_on_the_stdlib_and_hard_text(tok):
  held_out = [source for _, source in stdlib_code.read_split("validation")]  # 41 files, 0.8 MB.
  for source in held_out + [HARD_TEXT, "", "    \n\t\n"]:
    assert tok.decode(tok.encode(source)) == source
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 0)
  assert tok.vocab_size == 400


def test_load_picks_the_kind_by_file(tokenizer_paths, tmp_path):
  assert isinstance(tokenizers.load(tokenizer_paths["sentencepiece"]), tokenizers.SentencePieceTokenizer)
  assert isinstance(tokenizers.load(tokenizer_paths["bpe"]), tokenizers.HuggingFaceTokenizer)
  hf_dir = tmp_path / "model"
  hf_dir.mkdir()
  (hf_dir / "tokenizer.json").write_bytes(open(tokenizer_paths["bpe"], "rb").read())
  (hf_dir / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": {"content": "</s>"}}))
  loaded = tokenizers.load(str(hf_dir))
  assert (loaded.kind, loaded.bos_id, loaded.eos_id, loaded.pad_id) == ("huggingface", 1, 2, None)
  with pytest.raises(UserError, match="does not exist"):
    tokenizers.load(str(tmp_path / "missing.model"))


@pytest.mark.parametrize("kind", KINDS)
def test_tokenizer_training_is_deterministic(kind, train_texts, tmp_path):
  suffix = ".model" if kind == "sentencepiece" else ".json"
  paths = [str(tmp_path / f"{i}{suffix}") for i in range(2)]
  for path in paths:
    tokenizers.train(kind, train_texts[:4], path, 400)
  first, second = (open(p, "rb").read() for p in paths)
  assert first == second
  assert tokenizers.load(paths[0]).encode(HARD_TEXT) == tokenizers.load(paths[1]).encode(HARD_TEXT)


def test_sentencepiece_keeps_newlines_and_runs_of_spaces(tokenizer_paths):
  sp = tokenizers.load(tokenizer_paths["sentencepiece"])._sp  # pylint: disable=protected-access
  pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
  assert "\n" in pieces and "▁▁▁▁" in pieces  # An indent is one token; '\n' is not a space.
  assert sp.encode("x = 1234", out_type=str) == ["x", "▁=", "▁", "1", "2", "3", "4"]


def test_token_bytes_count_each_byte_once(tok):
  texts = [HARD_TEXT, "€€€", "", "plain ascii"]
  for source, (ids, counts) in zip(texts, tok.encode_with_bytes(texts)):
    assert list(ids) == tok.encode(source)
    assert counts.min(initial=0) >= 0
    assert counts.sum() == len(source.encode("utf-8"))
  # A character split over several tokens (byte fallback / byte-level) counts once.
  ids, counts = tok.encode_with_bytes(["﷽"])[0]
  assert len(ids) == 3 and sorted(counts.tolist()) == [0, 0, 3]
  assert tokenizers.token_bytes([1, 1, 4, 3, 6], 7).tolist() == [1, 0, 3, 0, 3]  # Trailing bytes: to the last.


# ---------------------------------------------------------------------------------------
# Packing.
# ---------------------------------------------------------------------------------------


def test_packed_rows_by_hand():
  stream, num_documents = packing.tokenize(CharTokenizer(), [[("abc", True)], [("de", True)], [("fghij", True)]])
  assert num_documents == 3
  src = packing.PackedSource(stream, seq_len=4, tokenizer=CharTokenizer(), num_documents=num_documents)
  # Stream: B a b c E B d e E B f g h i j E (16 tokens); rows start every 4 tokens.
  assert len(src) == 4 and src.num_tokens == 16 and src.num_bytes == 10
  rows = read_all(src)
  char = lambda s: [ord(c) + 3 for c in s]  # noqa: E731
  b, e, p = 1, 2, 0
  np.testing.assert_array_equal(rows["inputs"], [[b] + char("abc"), [e, b] + char("de"), [e, b] + char("fg"),
                                                 char("hij") + [e]])
  np.testing.assert_array_equal(rows["targets"], [char("abc") + [e], [b] + char("de") + [e], [b] + char("fgh"),
                                                  char("ij") + [e, p]])
  np.testing.assert_array_equal(rows["segment_ids"], [[1, 1, 1, 1], [1, 2, 2, 2], [1, 2, 2, 2], [1, 1, 1, 1]])
  np.testing.assert_array_equal(rows["positions"], [[0, 1, 2, 3], [0, 0, 1, 2], [0, 0, 1, 2], [0, 1, 2, 3]])
  np.testing.assert_array_equal(rows["weights"], [[1, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 0]])
  np.testing.assert_array_equal(rows["bytes"], [[1, 1, 1, 0], [0, 1, 1, 0], [0, 1, 1, 1], [1, 1, 0, 0]])
  assert {k: (v.dtype, v.shape) for k, v in rows.items()} == {
      k: (np.dtype(np.float32 if k in ("weights", "bytes") else np.int32), (4, 4)) for k in rows}
  # Padding past the end of the stream: segment 0, weight 0.
  src = packing.PackedSource(stream, seq_len=6, tokenizer=CharTokenizer(), num_documents=3)
  last = src.read([len(src) - 1])  # Stream tokens 12..15: h i j E, then padding.
  np.testing.assert_array_equal(last["inputs"], [char("hij") + [e, p, p]])
  np.testing.assert_array_equal(last["segment_ids"], [[1, 1, 1, 1, 0, 0]])
  np.testing.assert_array_equal(last["weights"], [[1, 1, 1, 0, 0, 0]])
  assert read_all(src)["bytes"].sum() == 10


def test_prompt_completion_weights_only_the_completion(tmp_path, tokenizer_paths):
  records = [{"prompt": "Q: 2+2?\nA:", "completion": " 4 — vier"}, {"prompt": "Say hi", "completion": "¡hola!"},
             {"prompt": "empty", "completion": ""}]
  files = write_jsonl(tmp_path / "pc.jsonl", records)
  for kind in KINDS:
    src = open_text(format="prompt_completion", files=files, split="train", validation_fraction=0.0, seq_len=8,
                    tokenizer=dict(path=tokenizer_paths[kind]), data_dir=str(tmp_path / "cache"))
    tok = src.tokenizer
    rows = read_all(src)
    weighted = rows["targets"][rows["weights"] > 0].tolist()
    expected = [t for r in records for t in tok.encode(r["completion"]) + [tok.eos_id]]
    assert weighted == expected  # Completion tokens and the eos after each, in order, once.
    assert rows["bytes"].sum() == src.num_bytes == sum(len(r["completion"].encode()) for r in records)


@pytest.fixture(scope="session")
def jsonl_files(tmp_path_factory):
  """Two JSONL files of 60 documents with non-ASCII text, and a text file set."""
  directory = tmp_path_factory.mktemp("jsonl")
  words = ["alpha", "βeta", "γάμμα", "δέλτα", "日本", "naïve", "😀", "x = 1", "\tindent", "end\n"]
  docs = [" ".join(words[(i * j) % len(words)] for j in range(i % 7 + 1)) + f" #{i}" for i in range(60)]
  for k in range(2):
    write_jsonl(directory / f"part{k}.jsonl", [{"text": d, "id": i} for i, d in enumerate(docs[k::2])])
  return str(directory / "*.jsonl"), docs


@pytest.mark.parametrize("kind", KINDS)
def test_every_token_once_and_bytes_add_up(kind, jsonl_files, tokenizer_paths, tmp_path):
  pattern, docs = jsonl_files
  splits = {}
  for split in ("train", "validation"):
    src = open_text(format="jsonl", files=pattern, split=split, validation_fraction=0.3, seq_len=16,
                    tokenizer=dict(path=tokenizer_paths[kind]), data_dir=str(tmp_path))
    tok = src.tokenizer
    texts = [d for d in docs if documents.in_split([(d, True)], split, 0.3)]
    rows = read_all(src)
    # The stream: each document as bos + tokens + eos, in file order.
    ordered = sorted(texts, key=lambda d: (docs.index(d) % 2, docs.index(d)))
    stream = [t for d in ordered for t in [tok.bos_id] + tok.encode(d) + [tok.eos_id]]
    n = len(stream)
    assert (src.num_tokens, src.num_documents) == (n, len(texts))
    inputs, targets = rows["inputs"].reshape(-1), rows["targets"].reshape(-1)
    assert inputs[:n - 1].tolist() == stream[:-1] and targets[:n - 1].tolist() == stream[1:]
    assert (rows["segment_ids"].reshape(-1)[n:] == 0).all() and (targets[n - 1:] == tok.pad_id).all()  # Padding.
    assert rows["weights"].sum() == n - len(texts)  # Every token but the bos, once.
    assert rows["bytes"].sum() == src.num_bytes == sum(len(d.encode("utf-8")) for d in texts)
    splits[split] = texts
  assert splits["validation"] and not set(splits["train"]) & set(splits["validation"])
  assert len(splits["train"]) + len(splits["validation"]) == len(docs)


def test_packing_is_deterministic_and_cached(jsonl_files, tokenizer_paths, tmp_path, monkeypatch):
  pattern, _ = jsonl_files
  section = dict(format="jsonl", files=pattern, split="train", seq_len=32,
                 tokenizer=dict(path=tokenizer_paths["sentencepiece"]))
  first = read_all(open_text(**section, data_dir=str(tmp_path / "a")))
  elsewhere = read_all(open_text(**section, data_dir=str(tmp_path / "b")))
  for key in first:
    np.testing.assert_array_equal(first[key], elsewhere[key])

  def fail(*args, **kwargs):
    raise AssertionError("tokenized again instead of reading the cache")
  monkeypatch.setattr(packing, "tokenize", fail)
  again = open_text(**dict(section, seq_len=8), data_dir=str(tmp_path / "a"))  # seq_len: not in the key.
  assert again.read([0])["inputs"].tolist()[0] == first["inputs"][0, :8].tolist()
  assert len(os.listdir(tmp_path / "a" / "jaxtrain_text")) == 1


# ---------------------------------------------------------------------------------------
# The user's files.
# ---------------------------------------------------------------------------------------


def write_mbox(path):
  box = mailbox.mbox(str(path))
  plain = email.message.EmailMessage()
  plain["From"] = "Zoë <zoe@example.com>"
  plain["To"] = "bob@example.com"
  plain["Subject"] = "Café ☕ tomorrow?"
  plain["Date"] = "Mon, 1 Jan 2024 10:00:00 +0000"
  plain.set_content("Rendez-vous au café à 10h — ça marche?\n", cte="quoted-printable")
  assert b"caf=C3=A9" in plain.as_bytes() and b"=?utf-8?" in plain.as_bytes()
  box.add(plain)
  multi = email.message.EmailMessage()
  multi["From"] = "alice@example.com"
  multi["Subject"] = "Report"
  multi.set_content("Grüße aus Köln\n", charset="iso-8859-1", cte="base64")
  multi.add_alternative("<p>Gr&uuml;&szlig;e <b>aus</b> K&ouml;ln</p>", subtype="html")
  multi.add_attachment(b"\x00\x01binary", maintype="application", subtype="octet-stream", filename="a.bin")
  box.add(multi)
  html_only = email.message.EmailMessage()
  html_only["Subject"] = "News"
  html_only.set_content("<html><style>p {}</style><p>Hello&nbsp;<i>world</i></p><p>Bye</p></html>", subtype="html")
  box.add(html_only)
  box.close()
  return str(path)


def test_mbox_messages_are_decoded(tmp_path):
  path = write_mbox(tmp_path / "mail.mbox")
  texts = [doc[0][0] for doc in documents.read("mbox", [path])]
  assert texts[0] == ("From: Zoë <zoe@example.com>\nTo: bob@example.com\nSubject: Café ☕ tomorrow?\n"
                      "Date: Mon, 01 Jan 2024 10:00:00 +0000\n\nRendez-vous au café à 10h — ça marche?\n")
  assert texts[1] == "From: alice@example.com\nSubject: Report\n\nGrüße aus Köln\n"  # The plain part, not html.
  assert texts[2] == "Subject: News\n\nHello world\nBye\n"
  src = open_text(format="mbox", files=path, split="train", validation_fraction=0.0, seq_len=64,
                  tokenizer=dict(kind="bpe", vocab_size=300), data_dir=str(tmp_path / "cache"))
  assert src.num_documents == 3 and read_all(src)["bytes"].sum() == sum(len(t.encode()) for t in texts)


def test_text_files_one_document_each(tmp_path, tokenizer_paths):
  for i, body in enumerate(["first file\r\nkeeps CRLF\n", "zweite Datei: ö\n", ""]):
    (tmp_path / f"{i}.txt").write_bytes(body.encode())
  docs = list(documents.read("text", documents.resolve_files(str(tmp_path / "*.txt"), "k")))
  assert [d[0][0] for d in docs] == ["first file\r\nkeeps CRLF\n", "zweite Datei: ö\n", ""]


PYC = b"\xa7\r\r\n\x00\x00\x00\x00" + bytes(range(256))  # The head of a .pyc: not text.
LATIN1_MBOX = (b"From a@example.com Mon Jan  1 00:00:00 2024\nFrom: a@example.com\nSubject: Menu\n"
               b"Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: 8bit\n\n"
               b"Caf\xe9 cr\xe8me\n")


def test_files_that_are_not_text_are_refused_in_one_line_naming_them(tmp_path, tokenizer_paths):
  big = b"x" * (1 << 20)  # Past the bytes checked at start-up: checked as read, before anything is cached.
  files = {"empty.txt": b"", "blank.txt": b" \n\t\n", "latin1.txt": "café au lait\n".encode("latin-1"),
           "module.pyc": PYC, "utf16.txt": "hi\n".encode("utf-16-le"), "late.txt": big + b"\n\xff\n",
           "latin1.jsonl": '{"text": "café"}\n'.encode("latin-1"),
           "late.jsonl": b'{"text": "' + big + b'"}\n{"text": "caf\xe9"}\n'}
  for name, body in files.items():
    (tmp_path / name).write_bytes(body)
  key = "config key 'input.data.files'"
  cases = [
      ("empty.txt", "text", f"{key}: {tmp_path}/empty.txt is empty; put text in it, or leave it out"),
      ("blank.txt", "text", f"{key}: {tmp_path}/blank.txt holds only whitespace; put text in it, or leave it out"),
      ("latin1.txt", "text", f"{key}: {tmp_path}/latin1.txt is not UTF-8 text (byte 0xe9 at offset 3); "
                             f"re-save it as UTF-8, or leave it out"),
      ("module.pyc", "text", f"{key}: {tmp_path}/module.pyc is not UTF-8 text (byte 0xa7 at offset 0); "
                             f"re-save it as UTF-8, or leave it out"),
      ("utf16.txt", "text", f"{key}: {tmp_path}/utf16.txt is binary, not text (a NUL byte at offset 1); "
                            f"leave it out"),
      ("*.pyc", "text", f"{key}: no usable file matches '{tmp_path}/*.pyc': {tmp_path}/module.pyc is not UTF-8 "
                        f"text (byte 0xa7 at offset 0); re-save it as UTF-8, or leave it out"),
      ("latin1.jsonl", "jsonl", f"{key}: {tmp_path}/latin1.jsonl is not UTF-8 text (byte 0xe9 at offset 13); "
                                f"re-save it as UTF-8, or leave it out"),
      ("late.txt", "text", f"{tmp_path}/late.txt is not UTF-8 text (byte 0xff at offset {len(big) + 1}); "
                           f"re-save it as UTF-8, or leave it out"),
      ("late.jsonl", "jsonl", f"{tmp_path}/late.jsonl:2: not UTF-8 text (byte 0xe9 at offset {len(big) + 26}); "
                              f"re-save it as UTF-8, or leave it out"),
  ]
  for name, fmt, message in cases:
    with pytest.raises(UserError) as info:
      open_text(format=fmt, files=str(tmp_path / name), split="train", validation_fraction=0.0, seq_len=16,
                tokenizer=dict(path=tokenizer_paths["bpe"]), data_dir=str(tmp_path / "cache"))
    assert str(info.value) == message
  assert not os.path.exists(tmp_path / "cache")  # Refused before anything was packed.
  # A mailbox is bytes: its messages' charsets (here ISO-8859-1, 8 bit) are decoded, not refused.
  (tmp_path / "latin1.mbox").write_bytes(LATIN1_MBOX)
  src = open_text(format="mbox", files=str(tmp_path / "latin1.mbox"), split="train", validation_fraction=0.0,
                  seq_len=16, tokenizer=dict(path=tokenizer_paths["bpe"]), data_dir=str(tmp_path / "cache"))
  assert [d[0][0] for d in documents.read("mbox", [str(tmp_path / "latin1.mbox")])] == [
      "From: a@example.com\nSubject: Menu\n\nCafé crème\n"]
  assert src.num_documents == 1


def test_a_glob_skips_files_that_are_not_text_naming_each_in_a_warning(tmp_path, tokenizer_paths, caplog):
  notes = tmp_path / "notes"
  notes.mkdir()
  (notes / "a.txt").write_text("first note ✓\n", encoding="utf-8")
  (notes / "b.md").write_text("second\n", encoding="utf-8")
  (notes / "c.pyc").write_bytes(PYC)
  (notes / "d.txt").write_bytes(b"")
  (notes / "e.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
  caplog.set_level("WARNING")
  src = open_text(format="text", files=[str(notes / "*"), str(notes / "a.txt")], split="train",
                  validation_fraction=0.0, seq_len=16, tokenizer=dict(path=tokenizer_paths["bpe"]),
                  data_dir=str(tmp_path / "cache"))
  assert src.num_documents == 2 and src.num_bytes == len("first note ✓\nsecond\n".encode())
  key = "config key 'input.data.files'"
  assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
      f"{key}: skipping {notes}/c.pyc, matched by '{notes}/*': it is not UTF-8 text (byte 0xa7 at offset 0)",
      f"{key}: skipping {notes}/d.txt, matched by '{notes}/*': it is empty",
      f"{key}: skipping {notes}/e.png, matched by '{notes}/*': it is not UTF-8 text (byte 0x89 at offset 0)"]


def test_tokenizer_is_trained_on_the_train_split_on_first_use(jsonl_files, tmp_path, monkeypatch):
  pattern, docs = jsonl_files
  seen = []
  real_train = tokenizers.train
  monkeypatch.setattr(tokenizers, "train",
                      lambda kind, texts, *args: seen.append(list(texts)) or real_train(kind, texts, *args))
  section = dict(format="jsonl", files=pattern, split="validation", validation_fraction=0.3, seq_len=16,
                 tokenizer=dict(kind="bpe", vocab_size=300), data_dir=str(tmp_path))
  val = open_text(**section)
  train_docs = [d for d in docs if documents.in_split([(d, True)], "train", 0.3)]
  assert len(seen) == 1 and sorted(seen[0]) == sorted(train_docs)
  # Beyond the limit, every k-th text (prompts and completions alike).
  assert text.training_texts([[("ab", True)], [("cd", False), ("ef", True)]], limit=4) == ["ab", "ef"]
  assert os.path.dirname(val.tokenizer.path) == str(tmp_path / "jaxtrain_text" / "tokenizers")
  again = open_text(**section)
  assert len(seen) == 1 and again.tokenizer.path == val.tokenizer.path  # Reused, not retrained.
  # An evaluator's section gives its split; the rest comes from the training source.
  cfg = reader(split="train")
  train = data.open_from_config(cfg.input.data, like=val)
  check_all_read(cfg)
  assert (train.tokenizer, train.seq_len, train.num_documents) == (val.tokenizer, 16, len(train_docs))


# ---------------------------------------------------------------------------------------
# stdlib_code.
# ---------------------------------------------------------------------------------------


def test_stdlib_split_is_by_file_disjoint_and_deterministic():
  files = stdlib_code.list_files()
  assert len(files) > 500 and files == sorted(files)
  assert not any(part in ("test", "tests", "idle_test", "site-packages") for f in files for part in f.split("/"))
  assert "os.py" in files and "json/decoder.py" in files and not any("sysconfigdata" in f for f in files)
  splits = {s: {f for f in files if stdlib_code.split_of(f) == s} for s in stdlib_code.SPLITS}
  assert sum(map(len, splits.values())) == len(files)
  assert 0.85 < len(splits["train"]) / len(files) < 0.95 and all(splits.values())
  # A pure function of the path: the same on any machine, in any listing order.
  expected = int.from_bytes(hashlib.sha256(b"os.py").digest()[:8], "big") % 100
  assert stdlib_code.split_of("os.py") == ("train" if expected < 90 else "validation" if expected < 95 else "test")


def test_stdlib_code_tfds_dataset(tfds_dir):
  seen = set()
  for split in stdlib_code.SPLITS:
    source = data.open_source("stdlib_code", split, data_dir=tfds_dir)
    ds = source._data_source  # pylint: disable=protected-access
    examples = ds.__getitems__(list(range(len(ds))))
    paths = sorted(e["path"].decode() for e in examples)
    assert paths == [p for p, _ in stdlib_code.read_split(split)]
    assert not seen & set(paths)
    seen |= set(paths)
    if split == "test":
      first = examples[0]
      assert first["text"].decode() == read_stdlib(first["path"].decode())
  assert seen == set(stdlib_code.list_files())


def test_stdlib_code_packed_validation(tfds_dir, tokenizer_paths):
  src = open_text(name="stdlib_code", split="validation", seq_len=128, data_dir=tfds_dir,
                  tokenizer=dict(path=tokenizer_paths["bpe"]))
  texts = [t for _, t in stdlib_code.read_split("validation")]
  assert src.num_documents == len(texts) and src.num_bytes == sum(len(t.encode()) for t in texts)
  assert read_all(src)["bytes"].sum() == src.num_bytes


def test_xz_bits_per_byte(train_texts):
  result = stdlib_code.xz_bits_per_byte(train_texts[:3] * 2)
  assert result["files"] == 6 and result["bytes"] == 2 * sum(len(t.encode()) for t in train_texts[:3])
  assert 1.0 < result["per_file"] < 3.0
  assert result["concatenated"] < 0.6 * result["per_file"]  # The repeats cost almost nothing joined.


# ---------------------------------------------------------------------------------------
# Config errors: one line naming the problem.
# ---------------------------------------------------------------------------------------


def test_config_errors(tmp_path, tokenizer_paths, tfds_dir):
  good = write_jsonl(tmp_path / "ok.jsonl", [{"text": "hello"}])
  bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "hello"}, {"body": "no text here"}])
  tokenizer = dict(path=tokenizer_paths["bpe"])
  cases = [
      (dict(files=str(tmp_path / "nothing*.txt")), r"'input.data.files': no files match '.*nothing\*\.txt'"),
      (dict(format="jsonl", files=bad),
       r"bad\.jsonl:2: no field 'text' in this JSON line; it has body \(the data section's 'field' names"),
      (dict(format="csv", files=good), r"'input.data.format' is 'csv'.*text, jsonl, prompt_completion, mbox"),
      (dict(format="jsonl", files=good, tokenizer=dict(path=str(tmp_path / "no.model"))),
       r"'input.data.tokenizer.path': tokenizer file .*no\.model does not exist"),
      (dict(format="jsonl", files=good, seq_len=1), r"'input.data.seq_len' must be at least 2"),
      (dict(format="jsonl", files=good, split="test"), r"'input.data.split' is 'test'"),
      (dict(name="stdlib_code", files=good), r"set either 'input.data.name'.*not both"),
      (dict(name="stdlib_code", field="body", data_dir=tfds_dir, validation_fraction=None),
       r"'input.data.field' is 'body', not a text feature of dataset 'stdlib_code'; its text features are text, path"),
      (dict(format="jsonl", files=good, tokenizer=dict(kind="wordpiece")), r"the kinds are sentencepiece, bpe"),
  ]
  for section, message in cases:
    section = dict(dict(split="train", seq_len=16, tokenizer=tokenizer, validation_fraction=0.0,
                        data_dir=str(tmp_path)), **section)
    with pytest.raises(UserError, match=message) as info:
      data.open_from_config(reader(**section).input.data)
    assert "\n" not in str(info.value)
  with pytest.raises(UserError, match="'input.data.seq_len' is required"):
    data.open_from_config(reader(name="stdlib_code", split="train").input.data)
