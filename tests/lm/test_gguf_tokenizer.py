"""A GGUF file's vocabulary in and out (jaxtrain/lm/gguf_tokenizer.py): written here as
llama.cpp's convert_hf_to_gguf.py writes it (test_gguf.write_gguf), read by
`jaxtrain.lm.load` into a tokenizer that must give the ids of the one it came from: a
byte-level BPE tokenizer.json ('gpt2' with the 'smollm' pre-tokenizer) and a SentencePiece
BPE tokenizer.model ('llama'). llama.cpp's own ids for the exports are compared in
test_gguf.py (tests/data/llama_cpp_reference.json)."""

import functools
import os

import gguf
import numpy as np
import pytest
from sentencepiece import sentencepiece_model_pb2 as pb

import hf_dirs
from jaxtrain.data import tokenizers
from jaxtrain.errors import UserError
from jaxtrain.lm import gguf as gguf_lib
from jaxtrain.lm import language_model as lm_lib
from test_gguf import CONTROL, LLAMA_CPP, NORMAL, UNUSED, write_gguf, write_vocabulary

UNKNOWN, BYTE = 2, 6  # llama.cpp's token types.
TEXTS = ["def add(a, b):\n    return a + b\n", "In 2024, 1234567 + 89 = ?", "naïve café → 数字 🙂",
         "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n", "  two  spaces\t\ttabs\n\n\n  end ",
         "class Point:\n    x: int = 0", "<s>text</s><pad> and <unk>", "'s 're I've ALL CAPS", ""]


@pytest.fixture(scope="module", autouse=True)
def gguf_cache(tmp_path_factory):
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("JAXTRAIN_CACHE", str(tmp_path_factory.mktemp("jaxtrain_cache")))
    yield


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """'gqa_tied' (320 embedding rows; 280 trained ids, two chat tokens added) with a chat template."""
  directory = hf_dirs.make(str(tmp_path_factory.mktemp("gqa_tied") / "model"), "gqa_tied")
  LLAMA_CPP.add_chat_tokens(directory)
  return directory


def assert_same_ids(got, want, texts=TEXTS):
  for text in texts:
    for special in (False, True):
      assert got.encode(text, special_tokens=special) == want.encode(text, special_tokens=special), (text, special)
    assert got.decode(got.encode(text)) == want.decode(want.encode(text)), text
  for (ids, counts), (want_ids, want_counts) in zip(got.encode_with_bytes(texts), want.encode_with_bytes(texts)):
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(counts, want_counts)


def test_a_converted_bpe_vocabulary_encodes_as_the_directorys_tokenizer(hf_dir, tmp_path):
  path = write_gguf(str(tmp_path / "model.gguf"), hf_dir)
  got, want = lm_lib.load(path).tokenizer, tokenizers.load(hf_dir)
  assert_same_ids(got, want)
  assert (got.bos_id, got.eos_id, got.pad_id, got.adds_bos) == (want.bos_id, want.eos_id, want.pad_id, False) == \
      (1, 2, 0, False)
  assert got.chat_template == want.chat_template == LLAMA_CPP.CHAT_TEMPLATE
  # llama.cpp's padding to the embedding's 320 rows is no token: decoding skips those ids, as the original does.
  assert got.vocab_size == want.vocab_size == 282 and got.decode([300, 17]) == want.decode([300, 17])
  im_start = got.encode("<|im_start|>", special_tokens=True)
  assert im_start == [280] and len(got.encode("<|im_start|>")) > 1  # A prompt's marker; data's text.
  assert [got.id_to_token(i) for i in got.encode("2024")] == ["2", "0", "2", "4"]  # 'smollm': digit by digit.
  assert got.path.startswith(os.path.join(os.environ["JAXTRAIN_CACHE"], "gguf-tokenizers"))
  assert lm_lib.load(path).tokenizer.path == got.path  # Converted once: the same vocabulary, the same directory.


def test_add_bos_token_in_the_file_puts_bos_before_a_prompt(hf_dir, tmp_path):
  path = write_gguf(str(tmp_path / "bos.gguf"), hf_dir, vocabulary=functools.partial(write_vocabulary, add_bos=True))
  lm = lm_lib.load(path)
  assert lm.tokenizer.adds_bos
  assert LLAMA_CPP.jaxtrain_ids(lm, ["def"]) == [[1] + lm.tokenizer.encode("def")]
  assert lm.tokenizer.path != lm_lib.load(write_gguf(str(tmp_path / "no_bos.gguf"), hf_dir)).tokenizer.path


def test_the_pre_tokenizer_the_file_names_splits_the_text(hf_dir, tmp_path):
  """llama.cpp's 'llama-bpe' (Llama 3's split) keeps '):\\n' in one piece where GPT-2's split
  cuts it: the merges then give other ids, the same text."""
  smollm = lm_lib.load(write_gguf(str(tmp_path / "smollm.gguf"), hf_dir)).tokenizer
  text = TEXTS[0]
  for pre in ("llama-bpe", "qwen2", "gpt-2"):
    path = write_gguf(str(tmp_path / f"{pre}.gguf"), hf_dir, vocabulary=functools.partial(write_vocabulary, pre=pre))
    tok = lm_lib.load(path).tokenizer
    ids = tok.encode(text)
    assert tok.decode(ids) == text, pre
    assert (ids == smollm.encode(text)) == (pre == "gpt-2"), pre


def test_vocabularies_jaxtrain_cannot_read_are_one_line(hf_dir, tmp_path):
  for name, vocabulary, message in (
      ("bert", functools.partial(write_vocabulary, model="bert"),
       "has a 'bert' tokenizer; jaxtrain reads 'gpt2' (byte-level BPE) and 'llama' (SentencePiece) vocabularies"),
      ("falcon", functools.partial(write_vocabulary, pre="falcon"),
       "splits text as llama.cpp's 'falcon' pre-tokenizer, which jaxtrain does not know (it knows smollm, gpt-2, "),
      ("empty", lambda writer, *_: (writer.add_string("tokenizer.ggml.model", "gpt2"),
                                    writer.add_array("tokenizer.ggml.tokens", [])),
       "holds no tokenizer.ggml.tokens: it has no vocabulary to read")):
    path = write_gguf(str(tmp_path / f"{name}.gguf"), hf_dir, vocabulary=vocabulary)
    with pytest.raises(UserError) as e:
      lm_lib.load(path)
    assert message in str(e.value) and "\n" not in str(e.value), name


# ---- SentencePiece ('llama': Llama 2, Mistral, TinyLlama) ----------------------------------------


def write_sentencepiece_vocabulary(writer, directory, vocab_size):
  """convert_hf_to_gguf.py's _create_vocab_sentencepiece for the directory's tokenizer.model:
  pieces, scores and types ([PADn] up to the embedding's rows), add_space_prefix from the
  normalizer, the special ids; no add_bos_token (llama.cpp's default for it: BOS)."""
  model = pb.ModelProto()
  with open(os.path.join(directory, "tokenizer.model"), "rb") as f:
    model.ParseFromString(f.read())
  kinds = {pb.ModelProto.SentencePiece.NORMAL: NORMAL, pb.ModelProto.SentencePiece.UNKNOWN: UNKNOWN,
           pb.ModelProto.SentencePiece.CONTROL: CONTROL, pb.ModelProto.SentencePiece.USER_DEFINED: 4,
           pb.ModelProto.SentencePiece.UNUSED: UNUSED, pb.ModelProto.SentencePiece.BYTE: BYTE}
  pieces = list(model.pieces)
  pad = range(len(pieces), vocab_size)
  writer.add_string("tokenizer.ggml.model", "llama")
  writer.add_string("tokenizer.ggml.pre", "default")
  writer.add_array("tokenizer.ggml.tokens", [p.piece for p in pieces] + [f"[PAD{i}]" for i in pad])
  writer.add_array("tokenizer.ggml.scores", [p.score for p in pieces] + [-1000.0 for _ in pad])
  writer.add_array("tokenizer.ggml.token_type", [kinds[p.type] for p in pieces] + [UNUSED for _ in pad])
  writer.add_bool("tokenizer.ggml.add_space_prefix", model.normalizer_spec.add_dummy_prefix)
  spec = model.trainer_spec
  for key, value in (("bos", spec.bos_id), ("eos", spec.eos_id), ("unknown", spec.unk_id), ("padding", spec.pad_id)):
    writer.add_uint32(f"tokenizer.ggml.{key}_token_id", value)


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
  """scripts/check_llama_cpp.py's SentencePiece model: a BPE tokenizer.model of 320 ids."""
  return LLAMA_CPP.spm_model(str(tmp_path_factory.mktemp("spm") / "model"))


def test_a_converted_sentencepiece_vocabulary_encodes_as_sentencepiece(spm_dir, tmp_path):
  path = write_gguf(str(tmp_path / "spm.gguf"), spm_dir, vocabulary=write_sentencepiece_vocabulary)
  got, want = lm_lib.load(path).tokenizer, tokenizers.load(spm_dir)
  assert want.kind == "sentencepiece" and got.kind == "sentencepiece"
  assert_same_ids(got, want)
  assert (got.bos_id, got.eos_id, got.pad_id, got.adds_bos) == (want.bos_id, want.eos_id, want.pad_id, True)
  assert got.encode("<s>x</s>", special_tokens=True) == [1] + want.encode("x") + [2]
  assert any(got.id_to_token(i).startswith("<0x") for i in got.encode("数"))  # Byte fallback.


def test_a_sentencepiece_bpe_export_holds_its_vocabulary_and_reads_back(spm_dir, tmp_path):
  lm = lm_lib.load(spm_dir)
  out = str(tmp_path / "spm.gguf")
  lm.export_gguf(out)
  f = gguf_lib.File(out)
  model = pb.ModelProto()
  with open(os.path.join(spm_dir, "tokenizer.model"), "rb") as file:
    model.ParseFromString(file.read())
  assert (f.value("tokenizer.ggml.model"), f.value("tokenizer.ggml.add_space_prefix"),
          f.value("tokenizer.ggml.add_bos_token"), f.value("tokenizer.ggml.unknown_token_id")) == ("llama", False, True, 3)
  assert f.value("tokenizer.ggml.tokens") == [p.piece for p in model.pieces]
  np.testing.assert_array_equal(np.float32(f.value("tokenizer.ggml.scores")), np.float32([p.score for p in model.pieces]))
  types = f.value("tokenizer.ggml.token_type")
  assert types[:4] == [CONTROL, CONTROL, CONTROL, UNKNOWN] and types.count(BYTE) == 256
  back = lm_lib.load(out)
  assert_same_ids(back.tokenizer, lm.tokenizer)
  np.testing.assert_array_equal(back.logits(hf_dirs.TOKENS), lm.logits(hf_dirs.TOKENS))


def test_a_token_list_the_model_is_smaller_than_is_refused(hf_dir, tmp_path):
  """More ids than embedding rows: they do not belong together. (llama.cpp's [PADn] padding
  past the tokenizer's ids is no token, and is left out: that file loads.)"""
  def too_many(writer, directory, vocab_size):
    write_vocabulary(writer, directory, vocab_size + 8, filler="extra{}")
  path = write_gguf(str(tmp_path / "more.gguf"), hf_dir, vocabulary=too_many)
  with pytest.raises(UserError, match=r"has 328 ids but the model at .*more.gguf only 320: they do not belong together"):
    lm_lib.load(path)
  assert gguf.GGUFReader(path).fields["tokenizer.ggml.tokens"].data  # The file itself is whole.
