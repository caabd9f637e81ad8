"""GGUF in and out (jaxtrain/lm/gguf.py), against files written here by llama.cpp's rules and
against llama.cpp's own outputs, with neither llama.cpp nor transformers installed.

In: `write_gguf` writes a Hugging Face Llama directory (tests/hf_dirs.py) with
gguf.GGUFWriter directly, as llama.cpp's convert_hf_to_gguf.py does: its tensor names, the
Q and K rows permuted for llama.cpp's rotary layout, its metadata keys, and the vocabulary
padded to the embedding's rows with [PADn] tokens. `jaxtrain.lm.load` of it must compute
what the directory computes, and read quantized tensors as gguf.quants dequantizes them.
Out: `LM.export_gguf` and `python -m jaxtrain.export --format=gguf`, read back, and tensor
for tensor what `write_gguf` writes. llama.cpp: tests/data/llama_cpp_reference.json holds
llama-cpp-python's ids, greedy tokens and logits on the exports of a tiny model
(scripts/check_llama_cpp.py writes it, and checks SmolLM2 the same way).
The tokenizer's side is in test_gguf_tokenizer.py.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from unittest import mock

import gguf
from gguf import GGMLQuantizationType as Q
from gguf import quants
import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import hf_dirs
from conftest import ROOT
from jaxtrain.data import tokenizers
from jaxtrain.errors import UserError
from jaxtrain.lm import gguf as gguf_lib
from jaxtrain.lm import language_model as lm_lib
from jaxtrain.models.llama import Llama


def _script():
  spec = importlib.util.spec_from_file_location("check_llama_cpp", os.path.join(ROOT, "scripts", "check_llama_cpp.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


LLAMA_CPP = _script()  # The reference model and the comparisons, shared with the script.
with open(os.path.join(ROOT, "tests", "data", "llama_cpp_reference.json"), encoding="utf-8") as _f:
  REFERENCE = json.load(_f)


@pytest.fixture(scope="module", autouse=True)
def gguf_cache(tmp_path_factory):
  """The tokenizers converted from GGUF go to a cache of this module's own."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("JAXTRAIN_CACHE", str(tmp_path_factory.mktemp("jaxtrain_cache")))
    yield


# ---- llama.cpp's conversion, written out independently of jaxtrain --------------------------

LAYER_TENSORS = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
TOP_TENSORS = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
               "lm_head.weight": "output.weight"}
CONTROL, NORMAL, UNUSED = 3, 1, 5  # llama.cpp's token types.


def read_json(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def gguf_name(hf_name):
  if hf_name in TOP_TENSORS:
    return TOP_TENSORS[hf_name]
  _, _, layer, rest = hf_name.split(".", 3)
  return f"blk.{layer}.{LAYER_TENSORS[rest.removesuffix('.weight')]}.weight"


def permute(w, n_head):
  """convert_hf_to_gguf.py's LlamaModel.permute of a Q or K weight's rows."""
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w, n_head):
  return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def qk_heads(hf_name, config):
  """The head count whose rows llama.cpp permutes in this weight (None: not permuted)."""
  if hf_name.endswith("self_attn.q_proj.weight"):
    return config["num_attention_heads"]
  if hf_name.endswith("self_attn.k_proj.weight"):
    return config["num_key_value_heads"]
  return None


def llama_cpp_tensors(directory):
  """{GGUF name: float32 array in llama.cpp's layout} of a Hugging Face Llama directory."""
  config = read_json(os.path.join(directory, "config.json"))
  out = {}
  for hf_name, w in load_file(os.path.join(directory, "model.safetensors")).items():
    heads = qk_heads(hf_name, config)
    out[gguf_name(hf_name)] = w if heads is None else permute(w, heads)
  return out


# K-quant blocks: where their float16 scales are (gguf.quants.Q*_K.dequantize_blocks). gguf-py
# cannot quantize to them, so their blocks are random bytes with small finite scales there.
K_SCALES = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}


def encode(w, qtype, rng):
  """`w` (float32, [rows, cols]) as the data GGUFWriter.add_tensor takes for `qtype`."""
  if qtype == Q.F32:
    return w
  if qtype == Q.F16:
    return w.astype(np.float16)
  if qtype not in K_SCALES:
    return quants.quantize(w, qtype)
  block, size = gguf.GGML_QUANT_SIZES[qtype]
  data = rng.integers(0, 256, (w.shape[0], w.shape[1] // block * size), dtype=np.uint8)
  blocks = data.reshape(-1, size)
  for at in K_SCALES[qtype]:
    blocks[:, at:at + 2] = rng.uniform(1e-3, 1e-2, (len(blocks), 1)).astype(np.float16).view(np.uint8)
  return data


def write_gguf(path, directory, qtype=lambda name: Q.F32, arch="llama", drop=(), extra=None, without=(), seed=0,
               vocabulary=None):
  """Writes the Hugging Face Llama `directory` as llama.cpp's convert_hf_to_gguf.py does:
  each tensor in `qtype(gguf_name)` (1-D ones in F32), minus the tensors `drop` and the
  metadata keys `without`, plus `extra` tensors; the vocabulary by `vocabulary(writer,
  directory, vocab_size)` (default `write_vocabulary`)."""
  config = read_json(os.path.join(directory, "config.json"))
  theta = config.get("rope_theta") or config["rope_parameters"]["rope_theta"]
  writer = gguf.GGUFWriter(path, arch)
  writer.add_string("general.name", "tiny")
  for key, value in (("block_count", config["num_hidden_layers"]),
                     ("context_length", config["max_position_embeddings"]),
                     ("embedding_length", config["hidden_size"]), ("feed_forward_length", config["intermediate_size"]),
                     ("attention.head_count", config["num_attention_heads"]),
                     ("attention.head_count_kv", config["num_key_value_heads"]),
                     ("attention.key_length", config["head_dim"]), ("attention.value_length", config["head_dim"]),
                     ("rope.dimension_count", config["head_dim"]), ("vocab_size", config["vocab_size"])):
    if key not in without:
      writer.add_uint32(f"{arch}.{key}", value)
  for key, value in (("rope.freq_base", theta), ("attention.layer_norm_rms_epsilon", config["rms_norm_eps"])):
    if key not in without:
      writer.add_float32(f"{arch}.{key}", value)
  (vocabulary or write_vocabulary)(writer, directory, config["vocab_size"])
  rng = np.random.default_rng(seed)
  tensors = {**llama_cpp_tensors(directory), **(extra or {})}
  for name, w in tensors.items():
    if name not in drop:
      t = qtype(name) if w.ndim > 1 else Q.F32
      writer.add_tensor(name, encode(w, t, rng), raw_dtype=None if t in (Q.F32, Q.F16) else t)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return path


def write_vocabulary(writer, directory, vocab_size, model="gpt2", pre="smollm", add_bos=False, filler="[PAD{}]"):
  """convert_hf_to_gguf.py's _set_vocab_gpt2 for the directory's tokenizer.json: every id up
  to the embedding's rows ([PADn], unused, where the tokenizer has none), added special
  tokens as control tokens, the merges; bos/eos/pad, add_bos_token, the chat template. The
  directory's pre-tokenizer is llama.cpp's 'smollm': digits one by one, then GPT-2's split."""
  spec = read_json(os.path.join(directory, "tokenizer.json"))
  config = read_json(os.path.join(directory, "tokenizer_config.json"))
  by_id = {i: token for token, i in spec["model"]["vocab"].items()}
  by_id.update({t["id"]: t["content"] for t in spec["added_tokens"]})
  special = {t["id"] for t in spec["added_tokens"] if t["special"]}
  ids = {token: i for i, token in by_id.items()}
  writer.add_string("tokenizer.ggml.model", model)
  writer.add_string("tokenizer.ggml.pre", pre)
  padding = UNUSED if filler == "[PAD{}]" else NORMAL  # Another filler: ids of real (if odd) tokens.
  writer.add_array("tokenizer.ggml.tokens", [by_id.get(i, filler.format(i)) for i in range(vocab_size)])
  writer.add_array("tokenizer.ggml.token_type", [CONTROL if i in special else NORMAL if i in by_id else padding
                                                  for i in range(vocab_size)])
  writer.add_array("tokenizer.ggml.merges", [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
  for role in ("bos", "eos", "pad"):
    writer.add_uint32(f"tokenizer.ggml.{'padding' if role == 'pad' else role}_token_id", ids[config[f"{role}_token"]])
  writer.add_bool("tokenizer.ggml.add_bos_token", add_bos)  # tokenizer.json has no post-processor: no BOS.
  if config.get("chat_template"):
    writer.add_string("tokenizer.chat_template", config["chat_template"])


def dequantized_directory(gguf_path, directory, out):
  """A copy of Hugging Face `directory` whose weights are gguf.quants' dequantization of the
  file's tensors, the Q/K permutation undone: what jaxtrain must read from the file."""
  shutil.copytree(directory, out)
  config = read_json(os.path.join(directory, "config.json"))
  names = {gguf_name(n): n for n in load_file(os.path.join(directory, "model.safetensors"))}
  tensors = {}
  for t in gguf.GGUFReader(gguf_path).tensors:
    w = quants.dequantize(np.asarray(t.data), t.tensor_type).reshape([int(n) for n in reversed(t.shape)])
    heads = qk_heads(names[t.name], config)
    tensors[names[t.name]] = np.ascontiguousarray(w if heads is None else unpermute(w, heads), np.float32)
  save_file(tensors, os.path.join(out, "model.safetensors"))
  return out


def flat_params(lm):
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(lm.variables["params"])}


def assert_same_params(got, want):
  got, want = flat_params(got), flat_params(want)
  assert got.keys() == want.keys()
  for name, value in want.items():
    assert got[name].dtype == value.dtype, name
    np.testing.assert_array_equal(got[name], value, err_msg=name)


def greedy(lm, prompts=hf_dirs.PROMPTS):
  lm.sampler.eos_ids = ()
  return lm.sampler.generate(prompts, hf_dirs.NEW_TOKENS)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """'gqa_tied' (320 embedding rows, 282 token ids: 280 trained, 2 chat tokens) with a chat template."""
  directory = hf_dirs.make(str(tmp_path_factory.mktemp("gqa_tied") / "model"), "gqa_tied")
  assert LLAMA_CPP.add_chat_tokens(directory) == 282
  return directory


@pytest.fixture(scope="module")
def hf_lm(hf_dir):
  return lm_lib.load(hf_dir)


@pytest.fixture(scope="module")
def converted(hf_dir, tmp_path_factory):
  """The directory as llama.cpp's converter writes it, in f32."""
  return write_gguf(str(tmp_path_factory.mktemp("converted") / "model.gguf"), hf_dir)


# ---- In ---------------------------------------------------------------------------------------


def test_a_gguf_converted_as_llama_cpp_does_computes_what_the_directory_does(hf_lm, converted):
  lm = lm_lib.load(converted)
  assert lm.module.num_heads == 4 and lm.module.kv_heads == 2 and lm.module.vocab_size == 320
  assert lm.context_length == 128 and lm.module.rope_theta == 10000.0
  assert lm.module.norm_eps == np.float32(1e-5)  # GGUF holds float32: 9.9999997e-06, the same in the model's float32.
  got, want = lm.logits(hf_dirs.TOKENS), hf_lm.logits(hf_dirs.TOKENS)
  assert got.dtype == np.float32
  assert np.abs(got - want).max() <= 1e-6  # Measured: 0 (the same float32 weights, the same computation).
  assert greedy(lm) == greedy(hf_lm)
  assert_same_params(lm, hf_lm)


def test_without_llama_cpps_permutation_the_logits_differ(hf_dir, hf_lm, tmp_path):
  """The comparison above can fail: Q and K rows in Hugging Face's order read wrongly."""
  config = read_json(os.path.join(hf_dir, "config.json"))
  unpermuted = {f"blk.{i}.attn_{x}.weight": unpermute(w, config[f"num_{h}_heads"])
                for i in range(2) for x, h in (("q", "attention"), ("k", "key_value"))
                for w in [llama_cpp_tensors(hf_dir)[f"blk.{i}.attn_{x}.weight"]]}
  path = write_gguf(str(tmp_path / "plain.gguf"), hf_dir, extra=unpermuted)
  assert np.abs(lm_lib.load(path).logits(hf_dirs.TOKENS) - hf_lm.logits(hf_dirs.TOKENS)).max() > 1e-2


BLOCK_32 = (Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.F16, Q.BF16)


def cycling(types):
  """A qtype for each tensor name, cycling through `types` in name order (the same every run)."""
  order = {}
  return lambda name: types[order.setdefault(name, len(order)) % len(types)]


def test_quantized_tensors_read_as_gguf_dequantizes_them(hf_dir, hf_lm, tmp_path):
  path = write_gguf(str(tmp_path / "q.gguf"), hf_dir, qtype=cycling(BLOCK_32))
  types = {t.tensor_type for t in gguf.GGUFReader(path).tensors}
  assert set(BLOCK_32) <= types
  lm = lm_lib.load(path)
  assert_same_params(lm, lm_lib.load(dequantized_directory(path, hf_dir, str(tmp_path / "want"))))
  error = np.abs(lm.logits(hf_dirs.TOKENS) - hf_lm.logits(hf_dirs.TOKENS)).max()
  assert 1e-2 < error < 2.0  # Q4_0 among them: not the f32 model, but near (measured 1.08; logits up to 4.5).
  # bfloat16 params: the float32 ones cast, read straight into bfloat16.
  half = flat_params(lm_lib.load(path, param_dtype="bfloat16"))
  for name, value in flat_params(lm).items():
    got = half[name]
    assert got.dtype == jax.numpy.bfloat16, name
    np.testing.assert_array_equal(got, value.astype(jax.numpy.bfloat16), err_msg=name)


K256 = dict(vocab_size=300, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=64, tie_word_embeddings=False, rope_theta=10000.0,
            max_position_embeddings=64)


def test_k_quants_read_as_gguf_dequantizes_them_and_scanned_layers_and_untied_export_too(tmp_path):
  """K-quants pack rows in blocks of 256: a model 256 wide, untied (output.weight too)."""
  with mock.patch.dict(hf_dirs.VARIANTS, {"k256": K256}):
    directory = hf_dirs.make(str(tmp_path / "k256"), "k256", std=0.05)
  path = write_gguf(str(tmp_path / "k.gguf"), directory, qtype=cycling(tuple(K_SCALES)))
  assert {t.tensor_type for t in gguf.GGUFReader(path).tensors} == set(K_SCALES) | {Q.F32}
  lm = lm_lib.load(path)
  assert "output.weight" in gguf_lib.File(path).tensors and "lm_head" in lm.variables["params"]
  assert_same_params(lm, lm_lib.load(dequantized_directory(path, directory, str(tmp_path / "want"))))
  # Stacked layers (scan_layers): each layer's slice from its own tensor.
  scanned = lm.module.clone(scan_layers=True)
  abstract = lm_lib.abstract_variables(scanned, lm_lib.strategy_for())
  params = gguf_lib.load_params(gguf_lib.File(path), lm.family, abstract["params"], scanned)
  logits, _ = scanned.apply({"params": params}, hf_dirs.TOKENS[:, :16], train=False)
  np.testing.assert_allclose(np.asarray(logits), lm.logits(hf_dirs.TOKENS[:, :16]), atol=1e-3, rtol=0)  # 8.6e-5.
  # Exported in f32: output.weight is the dequantized K-quant tensor.
  lm.export_gguf(str(tmp_path / "untied.gguf"))
  out = gguf_lib.File(str(tmp_path / "untied.gguf"))
  source = gguf_lib.File(path).tensors["output.weight"]
  np.testing.assert_array_equal(np.asarray(out.tensors["output.weight"].data),
                                quants.dequantize(np.asarray(source.data), source.tensor_type))
  assert_same_params(lm_lib.load(str(tmp_path / "untied.gguf")), lm)


ON_EIGHT = """
import json, os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax
from jaxtrain.lm import language_model as lm_lib
lm = lm_lib.load({path!r}, parallel_config=dict(mesh=dict(data=1, fsdp=8), fsdp_min_size=1024))
q = lm.variables["params"]["layers_0"]["self_attn"]["q_proj"]["kernel"]
lm.sampler.eos_ids = ()
print(json.dumps(dict(devices=jax.device_count(), spec=[str(a) for a in q.sharding.spec],
    greedy=lm.sampler.generate({prompts!r}, {new}), logits=lm.logits({tokens!r}).tolist())))
"""


@pytest.mark.slow
def test_on_eight_devices_a_quantized_gguf_gives_the_same_logits_and_tokens(hf_dir, tmp_path):
  path = write_gguf(str(tmp_path / "q.gguf"), hf_dir, qtype=cycling(BLOCK_32))
  code = ON_EIGHT.format(path=path, prompts=hf_dirs.PROMPTS, new=hf_dirs.NEW_TOKENS, tokens=hf_dirs.TOKENS.tolist())
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["devices"] == 8 and "fsdp" in report["spec"]
  one = lm_lib.load(path)
  np.testing.assert_allclose(np.asarray(report["logits"]), one.logits(hf_dirs.TOKENS), atol=1e-5, rtol=0)
  assert report["greedy"] == greedy(one)


# ---- Out --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(hf_lm, tmp_path_factory):
  """export_gguf of the directory's model in each outtype: {outtype: path}."""
  directory = tmp_path_factory.mktemp("exported")
  paths = {outtype: str(directory / f"model_{outtype}.gguf") for outtype in gguf_lib.OUTTYPES}
  for outtype, path in paths.items():
    hf_lm.export_gguf(path, outtype)
  return paths


def test_an_f32_export_loads_back_with_the_same_logits_and_tokenizer(hf_lm, exported, tmp_path):
  back = lm_lib.load(exported["f32"])
  np.testing.assert_array_equal(back.logits(hf_dirs.TOKENS), hf_lm.logits(hf_dirs.TOKENS))
  assert greedy(back) == greedy(hf_lm)
  for text in LLAMA_CPP.PROMPTS:
    assert back.tokenizer.encode(text, special_tokens=True) == hf_lm.tokenizer.encode(text, special_tokens=True)
  assert (back.tokenizer.adds_bos, back.tokenizer.chat_template) == (False, LLAMA_CPP.CHAT_TEMPLATE)
  again = str(tmp_path / "again.gguf")  # Exported again from the GGUF: the same file's content.
  back.export_gguf(again)
  assert LLAMA_CPP.tensor_digest(again) == LLAMA_CPP.tensor_digest(exported["f32"])
  assert lm_lib.load(again).tokenizer.fingerprint == back.tokenizer.fingerprint


# Largest |logit - f32 logit| on hf_dirs.TOKENS (logits up to 4.5), measured: f16 7.1e-3, bf16 7.0e-2,
# q8_0 0.23 (blocks of 32 in 8 bits: ~1% of a weight's scale; random weights amplify it).
TOLERANCES = {"f16": 2e-2, "bf16": 0.2, "q8_0": 0.5}


@pytest.mark.parametrize("outtype", sorted(TOLERANCES))
def test_a_lower_precision_export_holds_its_type_and_computes_close(hf_dir, hf_lm, exported, outtype):
  f = gguf_lib.File(exported[outtype])
  want = {"f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}[outtype]
  independent = llama_cpp_tensors(hf_dir)
  for name, tensor in f.tensors.items():
    expected = encode(independent[name], want if independent[name].ndim > 1 else Q.F32, None)
    assert tensor.tensor_type == (want if independent[name].ndim > 1 else Q.F32), name
    np.testing.assert_array_equal(np.asarray(tensor.data).reshape(expected.shape), expected, err_msg=name)
  back = lm_lib.load(exported[outtype])
  error = np.abs(back.logits(hf_dirs.TOKENS) - hf_lm.logits(hf_dirs.TOKENS)).max()
  assert 0 < error < TOLERANCES[outtype], error
  if outtype == "f16":
    assert greedy(back) == greedy(hf_lm)


def test_the_export_holds_llama_cpps_tensors_and_metadata(hf_dir, exported):
  f = gguf_lib.File(exported["f32"])
  independent = llama_cpp_tensors(hf_dir)
  assert set(f.tensors) == set(independent)
  for name, w in independent.items():  # Q and K rows permuted as convert_hf_to_gguf.py permutes them.
    assert f.tensors[name].tensor_type == Q.F32
    np.testing.assert_array_equal(np.asarray(f.tensors[name].data).reshape(w.shape), w, err_msg=name)
  assert not np.array_equal(independent["blk.0.attn_q.weight"],
                            load_file(os.path.join(hf_dir, "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"])
  want = {"general.architecture": "llama", "llama.block_count": 2, "llama.context_length": 128,
          "llama.embedding_length": 64, "llama.feed_forward_length": 96, "llama.attention.head_count": 4,
          "llama.attention.head_count_kv": 2, "llama.attention.key_length": 16, "llama.rope.freq_base": 10000.0,
          "llama.attention.layer_norm_rms_epsilon": pytest.approx(1e-5), "tokenizer.ggml.model": "gpt2",
          "tokenizer.ggml.pre": "smollm", "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
          "tokenizer.ggml.padding_token_id": 0, "tokenizer.ggml.add_bos_token": False,
          "tokenizer.chat_template": LLAMA_CPP.CHAT_TEMPLATE, "general.file_type": gguf.LlamaFileType.ALL_F32}
  assert {key: f.value(key) for key in want} == want
  tokens = f.value("tokenizer.ggml.tokens")
  assert tokens[280:282] == LLAMA_CPP.CHAT_TOKENS and f.value("tokenizer.ggml.token_type")[280:282] == [CONTROL] * 2
  assert f.value("tokenizer.ggml.merges") == [" ".join(m) for m in
                                              read_json(os.path.join(hf_dir, "tokenizer.json"))["model"]["merges"]]


def test_q8_0_keeps_rows_not_in_blocks_of_32_in_f16_as_llama_cpps_converter_does(hf_dir, tmp_path):
  module = Llama(vocab_size=320, dim=48, num_layers=1, num_heads=4, num_kv_heads=2, mlp_dim=64)
  variables = module.init(jax.random.key(0), np.zeros((1, 8), np.int32), train=False)
  lm = lm_lib.LM(module, variables, tokenizers.load(hf_dir), 64, "by hand")
  path = str(tmp_path / "w48.gguf")
  lm.export_gguf(path, "q8_0")
  types = {name: t.tensor_type for name, t in gguf_lib.File(path).tensors.items()}
  assert types["blk.0.ffn_down.weight"] == Q.Q8_0  # Rows of 64.
  assert {types[n] for n in ("token_embd.weight", "blk.0.attn_q.weight", "blk.0.ffn_up.weight")} == {Q.F16}  # Of 48.
  error = np.abs(lm_lib.load(path).logits(hf_dirs.TOKENS) - lm.logits(hf_dirs.TOKENS)).max()
  assert 0 < error < 1e-2, error


def test_a_model_whose_rope_gguf_cannot_hold_is_refused(tmp_path):
  lm = lm_lib.load(hf_dirs.make(str(tmp_path / "model"), "untied_llama3"))
  with pytest.raises(UserError, match=r"^this model scales RoPE \(llama3\), which jaxtrain does not write to GGUF yet;"):
    lm.export_gguf(str(tmp_path / "llama3.gguf"))
  assert os.listdir(tmp_path) == ["model"]


def test_the_export_lists_a_token_for_every_embedding_row_as_llama_cpp_requires(exported):
  # Without the padding llama.cpp refuses the file: 'token_embd.weight' has wrong shape.
  f = gguf_lib.File(exported["f32"])
  tokens, types = f.value("tokenizer.ggml.tokens"), f.value("tokenizer.ggml.token_type")
  assert len(tokens) == len(types) == f.shape("token_embd.weight")[0] == 320
  assert tokens[282:] == [f"[PAD{i}]" for i in range(282, 320)] and set(types[282:]) == {5}  # UNUSED.
  assert 5 not in types[:282]
