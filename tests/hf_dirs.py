"""Small Hugging Face Llama directories, built without transformers or a download:
config.json in the form transformers writes it, random weights in model.safetensors under
HF's state-dict names, and a byte-level BPE tokenizer.json trained on the fly.

The same seed gives the same bytes, so `scripts/check_hf_parity.py` (with transformers and
PyTorch) and the tests (without) see the same models: the script commits transformers'
logits and greedy tokens for them to tests/data/hf_parity.npz, and the tests compare.
"""

import json
import os

import numpy as np
from safetensors.numpy import save_file

from jaxtrain.data import tokenizers

VARIANTS = {
    # Grouped-query attention, tied embeddings, transformers 5's config (rope_parameters).
    "gqa_tied": dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, max_position_embeddings=128),
    # Untied, head_dim != hidden_size / heads, Llama 3.1's rope scaling in transformers 4's keys.
    "untied_llama3": dict(vocab_size=300, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=4, head_dim=16, tie_word_embeddings=False,
                          rope_theta=500000.0, max_position_embeddings=256,
                          rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
}
# Token ids the references are computed for (batch 2, length 20), and greedy prompts.
TOKENS = np.random.default_rng(7).integers(3, 290, size=(2, 20)).astype(np.int32)
PROMPTS = [[1, 17, 99, 250, 4], [1, 42]]
NEW_TOKENS = 12
TOKENIZER_TEXT = ["def add(a, b):\n    return a + b\n", "class Point:\n    x: int = 0\n"] * 20


def make(directory, variant, seed=0, std=0.15):
  """Writes the HF directory of `variant` (a key of VARIANTS) and returns its path."""
  spec = dict(VARIANTS[variant])
  os.makedirs(directory, exist_ok=True)
  config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
            "rms_norm_eps": 1e-5, "attention_bias": False, "mlp_bias": False, "bos_token_id": 1,
            "eos_token_id": 2, "pad_token_id": 0, "initializer_range": 0.02, "torch_dtype": "float32", **spec}
  with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2)
  rng = np.random.default_rng(seed)
  d, heads, kv, hd, mlp = (spec[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads",
                                            "head_dim", "intermediate_size"))
  shapes = {"model.embed_tokens.weight": (spec["vocab_size"], d), "model.norm.weight": (d,)}
  for i in range(spec["num_hidden_layers"]):
    p = f"model.layers.{i}."
    shapes.update({p + "self_attn.q_proj.weight": (heads * hd, d), p + "self_attn.k_proj.weight": (kv * hd, d),
                   p + "self_attn.v_proj.weight": (kv * hd, d), p + "self_attn.o_proj.weight": (d, heads * hd),
                   p + "mlp.gate_proj.weight": (mlp, d), p + "mlp.up_proj.weight": (mlp, d),
                   p + "mlp.down_proj.weight": (d, mlp), p + "input_layernorm.weight": (d,),
                   p + "post_attention_layernorm.weight": (d,)})
  if not spec["tie_word_embeddings"]:
    shapes["lm_head.weight"] = (spec["vocab_size"], d)
  tensors = {}
  for name, shape in sorted(shapes.items()):
    if name.endswith("norm.weight"):  # Norm scales near 1, as trained ones are.
      tensors[name] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    else:
      tensors[name] = (std * rng.standard_normal(shape)).astype(np.float32)
  save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
  tokenizers.train_bpe(TOKENIZER_TEXT, os.path.join(directory, "tokenizer.json"), vocab_size=280)
  with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
               "pad_token": "<pad>"}, f)
  return directory
