"""Small Hugging Face directories of the families beside Llama (Qwen2, Qwen3, Mistral).

transformers made them, with random weights (scripts/check_families.py): config.json as
transformers 5 writes it and model.safetensors (float16, to stay small; both sides compute
in float32) are committed under tests/data/families/<family>/, with transformers' logits,
greedy tokens and peft's logits in tests/data/families/reference.npz. `make` copies a
directory and adds a tokenizer trained on the fly, as tests/hf_dirs.py does.
"""

import json
import os
import shutil

import jax
import ml_collections
import numpy as np

import hf_dirs
from jaxtrain.config import Reader
from jaxtrain.data import tokenizers
from jaxtrain.lm import language_model as lm_lib
from jaxtrain.models import lora

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "families")
FAMILIES = ("qwen2", "qwen3", "mistral")
ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "mistral": "MistralForCausalLM"}
WINDOW = 8  # Mistral's sliding window: shorter than TOKENS, the long prompt and its completions.
TOKENS = np.random.default_rng(11).integers(3, 290, size=(2, 16)).astype(np.int32)
# The first prompt is longer than the window (prefill slides it too); batched, the second is
# left-padded by 10, which must not move its window.
PROMPTS = [[1, 17, 99, 250, 4, 33, 71, 8, 150, 201, 66, 9], [1, 42]]
NEW_TOKENS = 12
# Every projection of the attention (q/k/v biased in Qwen2), down_proj in every layer and
# up_proj in one (peft's config then names that one in full).
LORA = dict(rank=4, alpha=8.0, targets=("q_proj", "k_proj", "v_proj", "o_proj", "down_proj", "layers_1/mlp/up_proj"))


def make(directory, family, source=DATA):
  """A copy of `family`'s directory (committed in `source`), with a tokenizer; returns its path."""
  os.makedirs(directory, exist_ok=True)
  for name in ("config.json", "model.safetensors"):
    shutil.copy(os.path.join(source, family, name), directory)
  tokenizers.train_bpe(hf_dirs.TOKENIZER_TEXT, os.path.join(directory, "tokenizer.json"), vocab_size=280)
  with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
               "pad_token": "<pad>"}, f)
  return directory


def lora_of(lm, seed=0):
  """(LoRA module, its params) on `lm`'s model: the base its weights, every adapter random
  (B too, so each moves the logits)."""
  section = Reader(ml_collections.ConfigDict({"lora": LORA})).section("lora")
  module = lora.wrap(section, lm.module, lm_lib.EXAMPLE)
  params = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *lm_lib.EXAMPLE[0], train=False)["params"])
  base = jax.device_get(lm.variables["params"])
  rng = np.random.default_rng(seed)

  def fill(path, value):
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    if lora.is_adapter(name):
      return (0.3 * rng.standard_normal(value.shape)).astype(np.float32)
    node = base
    for key in name.split("/"):
      node = node[key]
    return node

  return module, jax.tree_util.tree_map_with_path(fill, params)
