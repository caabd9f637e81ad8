"""Hugging Face Llama directories in and out, against transformers' own outputs.

The directories are built here (tests/hf_dirs.py: random weights, a tokenizer trained on
the fly); tests/data/hf_parity.npz holds what transformers' LlamaForCausalLM computed for
the same directories (written by scripts/check_hf_parity.py, which also checks that
transformers loads what export_hf writes)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import hf_dirs
from conftest import ROOT
from jaxtrain.data import tokenizers
from jaxtrain.errors import UserError
from jaxtrain.lm import hf
from jaxtrain.lm import language_model as lm_lib

REFERENCE = np.load(os.path.join(ROOT, "tests", "data", "hf_parity.npz"))


@pytest.fixture(scope="module", params=sorted(hf_dirs.VARIANTS))
def hf_dir(request, tmp_path_factory):
  return request.param, hf_dirs.make(str(tmp_path_factory.mktemp(request.param) / "model"), request.param)


def test_logits_and_greedy_tokens_equal_transformers(hf_dir):
  variant, directory = hf_dir
  lm = lm_lib.load(directory)
  got = lm.logits(hf_dirs.TOKENS)
  want = REFERENCE[f"logits_{variant}"]
  assert got.dtype == np.float32 and got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  lm.sampler.eos_ids = ()  # transformers generated without stopping at EOS.
  greedy = lm.sampler.generate(hf_dirs.PROMPTS, hf_dirs.NEW_TOKENS)
  assert greedy == [REFERENCE[f"greedy_{variant}_{i}"].tolist() for i in range(len(hf_dirs.PROMPTS))]


def test_without_the_llama3_rope_scaling_the_logits_differ(tmp_path):
  """The untied variant's reference depends on its rope_scaling: the check can fail."""
  directory = hf_dirs.make(str(tmp_path / "model"), "untied_llama3")
  with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  del config["rope_scaling"]
  with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f)
  got = lm_lib.load(directory).logits(hf_dirs.TOKENS)
  assert np.abs(got - REFERENCE["logits_untied_llama3"]).max() > 1e-2


@pytest.mark.parametrize("variant", sorted(hf_dirs.VARIANTS))
def test_config_json_as_transformers_5_writes_it_reads_the_same(variant, tmp_path):
  """transformers 5 writes rope_parameters (theta inside); 4.x wrote rope_theta and rope_scaling."""
  ours = hf_dirs.make(str(tmp_path / "ours"), variant)
  theirs = tmp_path / "theirs"
  theirs.mkdir()
  with open(os.path.join(ROOT, "tests", "data", f"transformers_config_{variant}.json"), encoding="utf-8") as f:
    written = json.load(f)
  assert "rope_parameters" in written and "rope_theta" not in written
  (theirs / "config.json").write_text(json.dumps(written))
  assert hf.read_config(str(theirs)) == hf.read_config(ours)


def test_export_hf_writes_what_loads_back_identically(hf_dir, tmp_path):
  variant, directory = hf_dir
  lm = lm_lib.load(directory)
  out = str(tmp_path / "exported")
  lm.export_hf(out)
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
  assert not os.path.exists(out + ".partial")
  with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  spec = hf_dirs.VARIANTS[variant]
  assert config["architectures"] == ["LlamaForCausalLM"]
  assert {k: config[k] for k in ("hidden_size", "num_key_value_heads", "head_dim", "tie_word_embeddings")} == \
      {k: spec[k] for k in ("hidden_size", "num_key_value_heads", "head_dim", "tie_word_embeddings")}
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  assert load_file(os.path.join(out, "model.safetensors")).keys() == \
      load_file(os.path.join(directory, "model.safetensors")).keys()
  np.testing.assert_array_equal(lm_lib.load(out).logits(hf_dirs.TOKENS), lm.logits(hf_dirs.TOKENS))
  with pytest.raises(UserError, match="exists and is not empty; export to a new directory"):
    lm.export_hf(out)


def test_export_leaves_alone_what_it_did_not_make(hf_dir, tmp_path):
  """`OUT.partial/` is the user's own: it used to be deleted as export's scratch space."""
  lm = lm_lib.load(hf_dir[1])
  out = tmp_path / "exported"
  mine = tmp_path / "exported.partial"
  mine.mkdir()
  (mine / "notes.txt").write_text("my notes")
  lm.export_hf(str(out))
  assert (mine / "notes.txt").read_text() == "my notes"
  assert sorted(os.listdir(tmp_path)) == ["exported", "exported.partial"]  # No scratch directory left either.
  assert oct(os.stat(out).st_mode & 0o777) == oct(0o777 & ~_umask())  # An ordinary directory, not mkdtemp's 0o700.
  with pytest.raises(UserError, match=f"cannot write {tmp_path}/nowhere/out: {tmp_path}/nowhere is not a directory"):
    lm.export_hf(str(tmp_path / "nowhere" / "out"))


def _umask():
  mask = os.umask(0)
  os.umask(mask)
  return mask


def test_a_scanned_model_loads_the_same_weights(hf_dir):
  """scan_layers stacks the layers on axis 0: each layer's slice comes from its own tensor."""
  variant, directory = hf_dir
  lm = lm_lib.load(directory)
  scanned = lm.module.clone(scan_layers=True)
  abstract = lm_lib.abstract_variables(scanned, lm_lib.strategy_for())
  params = hf.load_params(directory, lm.family, abstract["params"])
  assert params["layers"]["self_attn"]["q_proj"]["kernel"].shape[0] == hf_dirs.VARIANTS[variant]["num_hidden_layers"]
  logits, _ = scanned.apply({"params": params}, hf_dirs.TOKENS, train=False)
  np.testing.assert_allclose(np.asarray(logits), REFERENCE[f"logits_{variant}"], atol=1e-4, rtol=0)


ON_EIGHT = """
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
sys.path.insert(0, {tests!r})
import jax, numpy as np
import hf_dirs
from jaxtrain.lm import hf
from jaxtrain.lm import language_model as lm_lib
reads = []
read = hf._Files.read
def counting_read(self, name, index, transposed):
  part = read(self, name, index, transposed)
  reads.append((name, part.size, int(np.prod(self.shape(name)))))
  return part
hf._Files.read = counting_read
lm = lm_lib.load({directory!r}, parallel_config=dict(mesh=dict(data=1, fsdp=8), fsdp_min_size=1024))
q = lm.variables["params"]["layers_0"]["self_attn"]["q_proj"]["kernel"]
lm.sampler.eos_ids = ()
print(json.dumps(dict(greedy=lm.sampler.generate(hf_dirs.PROMPTS, hf_dirs.NEW_TOKENS),
    devices=jax.device_count(), spec=[str(a) for a in q.sharding.spec],
    shard_shapes=sorted({{tuple(s.data.shape) for s in q.addressable_shards}}), shape=list(q.shape),
    largest_read=max(size / total for name, size, total in reads if total >= 1024),
    logits=lm.logits(hf_dirs.TOKENS).tolist())))
"""


@pytest.mark.slow
def test_on_eight_devices_each_reads_only_its_shard_and_logits_and_sampling_match(tmp_path):
  directory = hf_dirs.make(str(tmp_path / "model"), "gqa_tied")
  code = ON_EIGHT.format(tests=os.path.join(ROOT, "tests"), directory=directory)
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["devices"] == 8
  assert "fsdp" in report["spec"]
  assert report["shard_shapes"] == [[64 // 8, 64]] and report["shape"] == [64, 64]
  assert report["largest_read"] == pytest.approx(1 / 8)  # No device's callback read a whole tensor.
  np.testing.assert_allclose(np.asarray(report["logits"]), REFERENCE["logits_gqa_tied"], atol=1e-4, rtol=0)
  assert report["greedy"] == [REFERENCE[f"greedy_gqa_tied_{i}"].tolist() for i in range(len(hf_dirs.PROMPTS))]


# ---- Mistakes: one line each --------------------------------------------------------------------


def test_a_path_that_is_not_a_model_is_named(tmp_path):
  with pytest.raises(UserError, match=r"model path .*nowhere does not exist or is not a directory"):
    lm_lib.load(str(tmp_path / "nowhere"))
  with pytest.raises(UserError, match=r"is neither a jaxtrain work directory nor a Hugging Face model directory"):
    lm_lib.load(str(tmp_path))


def test_a_config_json_of_another_architecture_is_refused(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
  with pytest.raises(UserError, match=r"describes GPT2LMHeadModel, not an architecture jaxtrain reads \(LlamaForCausalLM, Qwen2ForCausalLM, "
                     r"Qwen3ForCausalLM, MistralForCausalLM, "
                     r"Gemma3ForCausalLM\)"):
    lm_lib.load(str(tmp_path))


def test_unsupported_llama_variants_are_refused(tmp_path):
  directory = hf_dirs.make(str(tmp_path / "model"), "gqa_tied")
  path = os.path.join(directory, "config.json")
  with open(path, encoding="utf-8") as f:
    config = json.load(f)
  for change, message in ((dict(attention_bias=True), "attention_bias=True; jaxtrain's Llama has no biases"),
                          (dict(rope_parameters={"rope_type": "yarn", "factor": 4.0}), "rope scaling 'yarn'"),
                          (dict(hidden_size=80), r"weight model.embed_tokens.weight has shape \[320, 64\], but "
                                                 r"config.json implies \[320, 80\]")):
    with open(path, "w", encoding="utf-8") as f:
      json.dump({**config, **change}, f)
    with pytest.raises(UserError, match=message):
      lm_lib.load(directory)


def test_a_tokenizer_larger_than_the_model_is_refused(tmp_path):
  directory = hf_dirs.make(str(tmp_path / "model"), "gqa_tied")
  tokenizers.train_bpe(hf_dirs.TOKENIZER_TEXT * 3 + [bytes(range(32, 127)).decode() * 9],
                       os.path.join(directory, "tokenizer.json"), vocab_size=400)
  assert tokenizers.load(directory).vocab_size > 320
  with pytest.raises(UserError, match=r"has \d+ ids but the model at .* only 320: they do not belong together"):
    lm_lib.load(directory)


def test_weights_without_a_place_are_refused_and_a_tied_heads_copy_is_not(tmp_path):
  from safetensors.numpy import load_file, save_file  # pylint: disable=import-outside-toplevel
  directory = hf_dirs.make(str(tmp_path / "model"), "gqa_tied")
  path = os.path.join(directory, "model.safetensors")
  tensors = load_file(path)
  save_file({**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"]}, path)  # Some tied exports do.
  np.testing.assert_allclose(lm_lib.load(directory).logits(hf_dirs.TOKENS), REFERENCE["logits_gqa_tied"], atol=1e-4)
  save_file({**tensors, "model.layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)}, path)
  with pytest.raises(UserError, match=r"holds weights jaxtrain's Llama has no place for: "
                                      r"model.layers.0.self_attn.q_proj.bias; is it a Llama checkpoint\?"):
    lm_lib.load(directory)
