"""Gemma 3 (jaxtrain/models/gemma3.py, lm/families/gemma3.py) against transformers' own
outputs, through Hugging Face directories and GGUF files.

The directory is transformers' (random weights, tests/data/families/gemma3/, made by
scripts/check_gemma3.py with a tokenizer added by tests/family_dirs.py): 3 layers (sliding,
full, sliding), a window of 4, head_dim 32 != dim / heads, query_pre_attn_scalar 24, local
RoPE base 100 and global 10000; gemma3_reference.npz holds what transformers computed on it.
Nothing here needs PyTorch. The slow test compares google/gemma-3-270m (Q4_K_M GGUF) with
transformers' logits on the same file, where that file is (docs/real_models.md)."""

import functools
import json
import os

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file
from sentencepiece import sentencepiece_model_pb2 as pb

import family_dirs
import hf_dirs
from conftest import tiny_lm
from jaxtrain.data import tokenizers
from jaxtrain.errors import UserError
from jaxtrain.lm import export as export_lib
from jaxtrain.lm import gguf as gguf_lib
from jaxtrain.lm import language_model as lm_lib
from jaxtrain.models.gemma3 import Gemma3
from jaxtrain import train
from test_families import DROP, with_config
from test_gguf import CONTROL, NORMAL, UNUSED, write_vocabulary

REFERENCE = np.load(os.path.join(family_dirs.DATA, "gemma3_reference.npz"))
UNKNOWN, USER_DEFINED = 2, 4  # llama.cpp's token types.
# llama.cpp's names (its gemma3 table), written out here rather than taken from jaxtrain.
LAYER_TENSORS = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
                 "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
                 "post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
                 "post_feedforward_layernorm": "post_ffw_norm"}
REAL = os.environ.get("JAXTRAIN_GEMMA3_GGUF") or "/tmp/work/gemma/gemma-3-270m-q4_k_m.gguf"
REAL_REFERENCE = os.path.join(os.path.dirname(REAL), "hf_ref_logits.npz")


@pytest.fixture(scope="module", autouse=True)
def gguf_cache(tmp_path_factory):
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("JAXTRAIN_CACHE", str(tmp_path_factory.mktemp("jaxtrain_cache")))
    yield


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
  return family_dirs.make(str(tmp_path_factory.mktemp("gemma3") / "model"), "gemma3")


@pytest.fixture(scope="module")
def lm(directory):
  return lm_lib.load(directory)


def test_logits_and_greedy_tokens_equal_transformers(lm):
  assert lm.family.architecture == "Gemma3ForCausalLM" and isinstance(lm.module, Gemma3)
  assert lm.module.kinds == ("sliding_attention", "full_attention", "sliding_attention")
  assert (lm.module.head_size, lm.module.query_pre_attn_scalar, lm.module.rope_local_theta, lm.module.rope_theta,
          lm.module.sliding_window) == (32, 24, 100.0, 10000.0, 4)
  got = lm.logits(family_dirs.TOKENS)
  assert got.shape == (2, 16, 300)
  assert np.abs(got - REFERENCE["logits"]).max() < 1e-4  # Measured 5.9e-7 (scripts/check_gemma3.py).
  lm.sampler.eos_ids = ()  # transformers generated without stopping at EOS.
  greedy = lm.sampler.generate(family_dirs.PROMPTS, family_dirs.NEW_TOKENS)  # The second left-padded by 10.
  assert greedy == [REFERENCE[f"greedy_{i}"].tolist() for i in range(len(family_dirs.PROMPTS))]


def test_the_window_matters_and_a_longer_one_matches_transformers_too(directory, tmp_path):
  wide = lm_lib.load(with_config(directory, str(tmp_path / "wide"), sliding_window=64))
  got = wide.logits(family_dirs.TOKENS)
  assert np.abs(got - REFERENCE["logits_no_window"]).max() < 1e-4
  assert np.abs(REFERENCE["logits_no_window"] - REFERENCE["logits"]).max() > 0.1


def test_transformers_4_config_keys_read_alike(directory, lm, tmp_path):
  old = with_config(directory, str(tmp_path / "old"), rope_parameters=DROP, layer_types=DROP, rope_theta=10000.0,
                    rope_local_base_freq=100.0, sliding_window_pattern=2)  # Layer 1 of 3 full: the same kinds.
  again = lm_lib.load(old)
  assert again.module.kinds == lm.module.kinds and again.module.rope_local_theta == 100.0
  np.testing.assert_array_equal(again.logits(family_dirs.TOKENS), lm.logits(family_dirs.TOKENS))


def test_export_hf_round_trip(lm, tmp_path):
  out = str(tmp_path / "out")
  lm.export_hf(out)
  with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  assert (config["architectures"], config["model_type"], config["query_pre_attn_scalar"]) == (
      ["Gemma3ForCausalLM"], "gemma3_text", 24)
  assert config["rope_parameters"]["sliding_attention"]["rope_theta"] == 100.0
  assert config["layer_types"] == list(lm.module.kinds)
  np.testing.assert_array_equal(lm_lib.load(out).logits(family_dirs.TOKENS), lm.logits(family_dirs.TOKENS))


@pytest.mark.parametrize("key, value, says", [
    ("final_logit_softcapping", 30.0, "softcapping"), ("hidden_activation", "relu", "gelu_pytorch_tanh"),
    ("architectures", ["Gemma3ForConditionalGeneration"], "Gemma3ForConditionalGeneration")])
def test_what_the_module_cannot_compute_is_one_line(directory, tmp_path, key, value, says):
  changes = {key: value, **({"model_type": "gemma3"} if key == "architectures" else {})}
  with pytest.raises(UserError, match=says) as e:
    lm_lib.load(with_config(directory, str(tmp_path / key), **changes))
  assert "\n" not in str(e.value)


def test_gguf_export_loads_back_with_the_same_logits(lm, tmp_path):
  path = str(tmp_path / "gemma3.gguf")
  lm.export_gguf(path)
  f = gguf_lib.File(path)
  assert f.arch == "gemma3"
  assert f.arch_value("rope.freq_base_swa") == 100.0 and f.arch_value("attention.sliding_window") == 4
  assert f.arch_value("attention.sliding_window_pattern") == [True, False, True]
  hf_norm = load_file(os.path.join(family_dirs.DATA, "gemma3", "model.safetensors"))["model.layers.0.input_layernorm.weight"]
  stored = gguf.quants.dequantize(np.asarray(f.tensors["blk.0.attn_norm.weight"].data), gguf.GGMLQuantizationType.F32)
  np.testing.assert_allclose(stored, 1 + hf_norm.astype(np.float32), rtol=1e-6)  # llama.cpp's 1 + w.
  back = lm_lib.load(path)
  assert back.module.kinds == lm.module.kinds and back.module.query_pre_attn_scalar == 24
  np.testing.assert_array_equal(back.logits(family_dirs.TOKENS), lm.logits(family_dirs.TOKENS))


def write_llama_cpp_gguf(path, directory, vocabulary=None):
  """The directory as llama.cpp's convert_hf_to_gguf.py writes a Gemma 3: no Q/K permutation,
  norms as 1 + w, and no local RoPE base, layer pattern or attention scale."""
  with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  writer = gguf.GGUFWriter(path, "gemma3")
  for key, value in (("block_count", config["num_hidden_layers"]), ("context_length", config["max_position_embeddings"]),
                     ("embedding_length", config["hidden_size"]), ("feed_forward_length", config["intermediate_size"]),
                     ("attention.head_count", config["num_attention_heads"]),
                     ("attention.head_count_kv", config["num_key_value_heads"]),
                     ("attention.key_length", config["head_dim"]), ("attention.value_length", config["head_dim"]),
                     ("attention.sliding_window", config["sliding_window"])):
    writer.add_uint32(f"gemma3.{key}", value)
  writer.add_float32("gemma3.rope.freq_base", config["rope_parameters"]["full_attention"]["rope_theta"])
  writer.add_float32("gemma3.attention.layer_norm_rms_epsilon", config["rms_norm_eps"])
  (vocabulary or write_vocabulary)(writer, directory, config["vocab_size"])
  for name, w in load_file(os.path.join(directory, "model.safetensors")).items():
    w = w.astype(np.float32)
    parts = name.split(".")
    if name == "model.embed_tokens.weight":
      gguf_name = "token_embd.weight"
    elif name == "model.norm.weight":
      gguf_name = "output_norm.weight"
    else:
      gguf_name = f"blk.{parts[2]}.{LAYER_TENSORS['.'.join(parts[3:-1])]}.weight"
    writer.add_tensor(gguf_name, w + 1 if name.endswith("norm.weight") else w)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return path


def test_a_gguf_written_as_llama_cpp_does_reads_with_its_defaults(directory, tmp_path):
  path = write_llama_cpp_gguf(str(tmp_path / "llama_cpp.gguf"), directory)
  got = lm_lib.load(path)
  # What llama.cpp's gemma3 assumes: every 6th layer full (none of 3), base 10000, scalar head_dim.
  assert got.module.kinds == ("sliding_attention",) * 3
  assert (got.module.rope_local_theta, got.module.query_pre_attn_scalar) == (10000.0, 32)
  same = lm_lib.load(with_config(directory, str(tmp_path / "defaults"), layer_types=DROP, query_pre_attn_scalar=32,
                                 rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                                  "full_attention": {"rope_type": "default", "rope_theta": 10000.0}}))
  assert np.abs(got.logits(family_dirs.TOKENS) - same.logits(family_dirs.TOKENS)).max() < 1e-5


def gemma_vocabulary(model_path, writer, directory, vocab_size):
  """A SentencePiece vocabulary (trained into `model_path`) as llama.cpp writes Gemma's: the
  roles named '<bos>', '<eos>', '<unk>' (typed CONTROL, as Gemma's is), '<end_of_turn>', and
  a run of three '▁' stored as spaces, user-defined."""
  del directory
  tokenizers.train_sentencepiece(hf_dirs.TOKENIZER_TEXT, model_path, 290, model_type="bpe")
  model = pb.ModelProto()
  with open(model_path, "rb") as f:
    model.ParseFromString(f.read())
  spec = model.trainer_spec
  names = {spec.unk_id: "<unk>", spec.bos_id: "<bos>", spec.eos_id: "<eos>"}
  tokens = [names.get(i, p.piece) for i, p in enumerate(model.pieces)]
  types = [CONTROL if i in names else USER_DEFINED if p.type == pb.ModelProto.SentencePiece.USER_DEFINED else
           6 if p.type == pb.ModelProto.SentencePiece.BYTE else NORMAL for i, p in enumerate(model.pieces)]
  tokens += ["<end_of_turn>", "   "]
  types += [CONTROL, USER_DEFINED]
  tokens += [f"[PAD{i}]" for i in range(len(tokens), vocab_size)]
  types += [UNUSED] * (vocab_size - len(types))
  writer.add_string("tokenizer.ggml.model", "llama")
  writer.add_string("tokenizer.ggml.pre", "default")
  writer.add_array("tokenizer.ggml.tokens", tokens)
  writer.add_array("tokenizer.ggml.scores", [float(-i) for i in range(vocab_size)])
  writer.add_array("tokenizer.ggml.token_type", types)
  writer.add_bool("tokenizer.ggml.add_space_prefix", False)
  writer.add_bool("tokenizer.ggml.add_bos_token", True)
  for key, value in (("bos", spec.bos_id), ("eos", spec.eos_id), ("unknown", spec.unk_id)):
    writer.add_uint32(f"tokenizer.ggml.{key}_token_id", value)


def test_a_gemma_sentencepiece_vocabulary_keeps_its_roles_and_space_runs(directory, tmp_path):
  vocabulary = functools.partial(gemma_vocabulary, str(tmp_path / "spm.model"))
  path = write_llama_cpp_gguf(str(tmp_path / "vocab.gguf"), directory, vocabulary=vocabulary)
  got = lm_lib.load(path)
  tok = got.tokenizer
  tokens = gguf_lib.File(path).value("tokenizer.ggml.tokens")
  assert (tok.bos_id, tok.eos_id) == (tokens.index("<bos>"), tokens.index("<eos>"))  # Not None.
  assert tok.adds_bos and tok.id_to_token(tok.bos_id) == "<bos>"
  spaces = tokens.index("   ")
  ids = tok.encode("a   b")
  assert spaces in ids and tok.decode(ids) == "a   b"
  assert tokens.index("<end_of_turn>") in got.eos_ids and tok.eos_id in got.eos_ids
  with open(os.path.join(tok.path), "rb") as f:
    model = pb.ModelProto.FromString(f.read())
  assert model.pieces[tokens.index("<unk>")].type == pb.ModelProto.SentencePiece.UNKNOWN


@pytest.mark.slow
@pytest.mark.skipif(not (os.path.isfile(REAL) and os.path.isfile(REAL_REFERENCE)),
                    reason="google/gemma-3-270m's Q4_K_M GGUF and transformers' logits on it are not here")
def test_gemma_3_270m_gguf_computes_what_transformers_does():
  lm = lm_lib.load(REAL)
  reference = np.load(REAL_REFERENCE)
  got = lm.logits(reference["ids"])[0]
  assert np.abs(got - reference["logits"]).max() < 1e-3  # Measured 9.1e-5 (docs/real_models.md).
  assert (got.argmax(-1) == reference["logits"].argmax(-1)).all()
  assert (lm.tokenizer.bos_id, lm.tokenizer.eos_id) == (2, 1) and set(lm.eos_ids) == {1, 106}


def test_packed_documents_compute_as_each_alone_and_scan_layers_is_refused(lm):
  tokens = family_dirs.TOKENS[:, :12]
  segments = np.asarray([[1] * 5 + [2] * 7] * 2)
  positions = np.asarray([list(range(5)) + list(range(7))] * 2)
  packed = lm.module.apply(lm.variables, tokens, train=False, segment_ids=segments, positions=positions)[0]
  alone = lm.module.apply(lm.variables, tokens[:, 5:], train=False)[0]
  assert np.abs(np.asarray(packed)[:, 5:] - np.asarray(alone)).max() < 1e-5  # Measured 0.
  with pytest.raises(UserError, match="scan_layers"):
    Gemma3(vocab_size=300, scan_layers=True)


def test_a_lora_fine_tune_from_the_directory_trains_and_exports(directory, corpus, tfds_dir, tmp_path):
  """init_from.hf_dir with model=True makes a model.name='gemma3' run; LoRA trains its
  adapters alone, and the merged model and the adapter go out under Gemma's names."""
  del tfds_dir
  config = tiny_lm(corpus)
  config.total_steps, config.log_every_steps = 8, 4
  config.evals.val.every_steps = config.checkpoint.every_steps = 8
  config.input.data.tokenizer = None
  config.model = dict(dtype="float32", scan_layers=True)  # The email assistant's default: not for Gemma's layers.
  config.init_from = dict(hf_dir=directory, model=True)
  config.lora = dict(rank=4, alpha=8.0, targets=("q_proj", "v_proj", "down_proj"))
  config.optimizer.lr = 3e-3
  workdir = str(tmp_path / "run")
  train.run(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    losses = [row["train/loss"] for row in map(json.loads, f) if "train/loss" in row]
  assert len(losses) == 2 and all(np.isfinite(losses)) and losses[-1] < losses[0]
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    assert "scan_layers" not in json.load(f)["model"]  # Dropped, so the run resumes and loads unrolled.
  tuned = lm_lib.load(workdir)
  assert tuned.family.architecture == "Gemma3ForCausalLM" and isinstance(tuned.module, Gemma3)
  export_lib.export(workdir, "peft", str(tmp_path / "adapter"))
  tensors = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
  assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in tensors
  assert len(tensors) == 2 * 3 * tuned.module.num_layers
  export_lib.export(workdir, "hf", str(tmp_path / "merged"))
  tokens = family_dirs.TOKENS[:1]
  np.testing.assert_allclose(lm_lib.load(str(tmp_path / "merged")).logits(tokens), tuned.logits(tokens), atol=1e-5)
