"""GGUF out through the command (`python -m jaxtrain.export --format=gguf`) on a trained run,
files that are not what they claim, and llama.cpp's own outputs on jaxtrain's exports
(tests/data/llama_cpp_reference.json, written by scripts/check_llama_cpp.py). The
helpers and the files they write are test_gguf.py's."""

import os
import subprocess
import sys

import gguf
from gguf import GGMLQuantizationType as Q
import numpy as np
import pytest

from conftest import ROOT, tiny_lm
from jaxtrain.errors import UserError
from jaxtrain.lm import export as export_lib
from jaxtrain.lm import gguf as gguf_lib
from jaxtrain.lm import language_model as lm_lib
from jaxtrain import train
from test_gguf import LLAMA_CPP, REFERENCE, converted, gguf_cache, hf_dir, write_gguf  # noqa: F401  (fixtures)


# ---- The command, on a trained run ------------------------------------------------------------


def export_command(*args):
  return subprocess.run([sys.executable, "-m", "jaxtrain.export", *args], capture_output=True, text=True,
                        timeout=300, cwd=ROOT)


def test_the_command_exports_a_run_in_q8_0_that_loads_back_close(pretrained, tmp_path):
  out = str(tmp_path / "run.gguf")
  result = export_command(f"--workdir={pretrained}", "--format=gguf", f"--out={out}", "--outtype=q8_0")
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout == f"wrote {out}\n" and os.listdir(tmp_path) == ["run.gguf"]
  run, back = lm_lib.load(pretrained), lm_lib.load(out)
  f = gguf_lib.File(out)
  assert f.value("general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0
  assert f.tensors["blk.0.attn_q.weight"].tensor_type == Q.Q8_0
  assert f.value("tokenizer.ggml.add_bos_token") is True and back.tokenizer.adds_bos  # BPE runs start with BOS.
  text = "def parse(text):\n    return text.split(',')\n"
  ids = run.tokenizer.encode(text)
  assert back.tokenizer.encode(text) == ids
  tokens = np.asarray([[run.tokenizer.bos_id] + ids[:31]])
  error = np.abs(back.logits(tokens) - run.logits(tokens)).max()
  assert 0 < error < 0.02, error  # Measured 3.2e-3 (logits up to 1.2 after 20 steps).


def test_export_mistakes_are_one_line_and_write_nothing(pretrained, tmp_path):
  taken = tmp_path / "taken.gguf"
  taken.write_text("mine")
  result = export_command(f"--workdir={pretrained}", "--format=gguf", f"--out={taken}")
  assert result.returncode != 0 and result.stderr.strip().splitlines()[-1] == \
      f"error: --out={taken} exists; export to a new file"
  assert taken.read_text() == "mine"
  result = export_command(f"--workdir={pretrained}", "--format=gguf", f"--out={tmp_path / 'a.gguf'}",
                          "--outtype=q4_k")
  assert result.returncode != 0 and result.stderr.strip().splitlines()[-1] == \
      "error: --outtype must be one of f32, f16, bf16, q8_0, got q4_k"
  for out, outtype, message in (
      (tmp_path / "model.bin", "f32", f"--out={tmp_path / 'model.bin'} does not end in .gguf; name the file FILE.gguf"),
      (tmp_path / "nowhere" / "m.gguf", "f32", f"--out=cannot write {tmp_path / 'nowhere' / 'm.gguf'}: "
                                               f"{tmp_path / 'nowhere'} is not a directory; create it first"),
      (tmp_path / "b.gguf", "q4_k", "unknown GGUF outtype 'q4_k'; choose one of f32, f16, bf16, q8_0")):
    with pytest.raises(UserError) as e:
      export_lib.export(pretrained, "gguf", str(out), outtype=outtype)
    assert str(e.value) == message
  assert os.listdir(tmp_path) == ["taken.gguf"]


def test_a_run_with_a_sentencepiece_unigram_tokenizer_is_refused(tfds_dir, corpus, tmp_path):
  workdir = str(tmp_path / "run")
  config = tiny_lm(corpus)
  config.input.data.tokenizer = dict(kind="sentencepiece", vocab_size=384)
  config.total_steps, config.schedule.warmup_steps = 2, 1
  del config["evals"]
  train.run(config, workdir)
  out = tmp_path / "out"
  out.mkdir()
  with pytest.raises(UserError) as e:
    export_lib.export(workdir, "gguf", str(out / "unigram.gguf"))
  assert "\n" not in str(e.value) and "is a SentencePiece unigram model" in str(e.value)
  assert os.listdir(out) == []


# ---- Files that are not what they claim: one line each ----------------------------------------


def one_line(path):
  with pytest.raises(UserError) as e:
    lm_lib.load(str(path))
  assert "\n" not in str(e.value)
  return str(e.value)


def test_load_mistakes_are_one_line(hf_dir, converted, tmp_path):
  text = tmp_path / "notes.gguf"
  text.write_text("not a model\n" * 100)
  assert one_line(text).startswith(f"cannot read {text} as GGUF (")
  with open(converted, "rb") as f:
    whole = f.read()
  for cut in (100, len(whole) // 2):
    truncated = tmp_path / f"cut_{cut}.gguf"
    truncated.write_bytes(whole[:cut])
    assert one_line(truncated).startswith(f"cannot read {truncated} as GGUF ("), cut
  assert one_line(tmp_path / "missing.gguf") == f"GGUF file {tmp_path / 'missing.gguf'} does not exist"

  gpt2 = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
  gpt2.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
  gpt2.write_header_to_file()
  gpt2.write_kv_data_to_file()
  gpt2.write_tensors_to_file()
  gpt2.close()
  assert one_line(tmp_path / "gpt2.gguf").startswith(f"{tmp_path / 'gpt2.gguf'} holds a 'gpt2' model, not an "
                                                     f"architecture jaxtrain reads from GGUF (gemma3, llama")

  path = write_gguf(str(tmp_path / "no_up.gguf"), hf_dir, drop={"blk.1.ffn_up.weight"})
  assert one_line(path) == f"{path} lacks the tensor blk.1.ffn_up.weight that its metadata implies"
  path = write_gguf(str(tmp_path / "bias.gguf"), hf_dir, extra={"blk.0.attn_q.bias": np.zeros(64, np.float32)})
  assert one_line(path).startswith(f"{path} holds tensors jaxtrain's Llama has no place for: blk.0.attn_q.bias")
  path = write_gguf(str(tmp_path / "no_layers.gguf"), hf_dir, without={"block_count"})
  assert one_line(path) == f"{path} lacks the llama metadata for num_hidden_layers"


# ---- llama.cpp's own outputs (tests/data/llama_cpp_reference.json) ----------------------------


@pytest.mark.parametrize("case", sorted(LLAMA_CPP.CASES))
def test_jaxtrain_tokenizes_and_continues_as_llama_cpp_did(case, tmp_path):
  """scripts/check_llama_cpp.py ran llama.cpp on this very file (the tensor digest says so):
  the byte-level BPE model in f32 and f16, the SentencePiece one in f32."""
  kind, outtype = LLAMA_CPP.CASES[case]
  source = lm_lib.load(LLAMA_CPP.MODELS[kind](str(tmp_path / "model")))
  path = str(tmp_path / f"{case}.gguf")
  source.export_gguf(path, outtype)
  reference = REFERENCE[case]
  assert LLAMA_CPP.tensor_digest(path) == reference["tensor_digest"]
  lm = lm_lib.load(path)
  assert LLAMA_CPP.jaxtrain_ids(lm, REFERENCE["texts"]) == reference["text_ids"]
  ids, continuations, gaps, last = LLAMA_CPP.jaxtrain_side(lm, REFERENCE["prompts"], REFERENCE["new_tokens"])
  assert ids == reference["ids"]
  assert min(gaps) > LLAMA_CPP.NEAR_TIE and reference["greedy_is_clear"]  # No near-tie decides a token.
  assert continuations == reference["greedy"]
  if outtype == "f32":  # llama.cpp's logits at each prompt's last position (measured: 6.8e-5 and 5.2e-4 apart).
    np.testing.assert_allclose(np.asarray(last), np.asarray(reference["last_logits"]), atol=2e-3, rtol=0)
