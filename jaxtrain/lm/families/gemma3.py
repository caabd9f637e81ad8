"""The Gemma 3 family (text, dense: Gemma 3 270M, 1B, and the text half of the larger ones
once split out): Hugging Face's Gemma3ForCausalLM (model_type 'gemma3_text'), the module
`jaxtrain.models.gemma3`. Param names map as the Llama's do. config.json is read as
transformers 4.x writes it (`rope_theta`, `rope_local_base_freq`, `rope_scaling`,
`sliding_window_pattern`) and as 5.x does (`rope_parameters` per layer type,
`layer_types`); we write 5.x's keys, which 4.5x reads too.

GGUF ('gemma3'): llama.cpp keeps no Q/K permutation, stores every norm weight as 1 + w
(HF's w), and does not record the local RoPE base, the layer pattern or the attention scale
(its gemma3 hard-codes 10000, every 6th layer full and head_dim**-0.5): we supply those
defaults on reading, and write them as `rope.freq_base_swa`, `attention.sliding_window_pattern`
and `attention.scale` so a jaxtrain export reads back as it was.
"""

from absl import logging
import numpy as np

from jaxtrain.errors import UserError
from jaxtrain.lm import families
from jaxtrain.lm.families import llama
from jaxtrain.models import gemma3

PATTERN = 6  # transformers' and llama.cpp's default: every 6th layer full.


@families.register
class Gemma3(llama.Llama):
  title = "Gemma 3"
  model_name = "gemma3"
  architecture = "Gemma3ForCausalLM"
  model_type = "gemma3_text"
  gguf_arch = "gemma3"
  gguf_permutes_qk = False
  gguf_keeps_window = True

  def module(self, **kwargs):
    return gemma3.Gemma3(**kwargs)

  def from_hf_config(self, config, path):
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
      if config.get(key) is not None:
        raise UserError(f"{path} sets {key}={config[key]} (Gemma 2's softcapping), which jaxtrain's Gemma 3 lacks")
    if config.get("use_bidirectional_attention"):
      raise UserError(f"{path} sets use_bidirectional_attention=True (an encoder); jaxtrain's Gemma 3 is causal")
    act = config.get("hidden_activation") or config.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
      raise UserError(f"{path} sets hidden_activation={act!r}; jaxtrain's Gemma 3 uses 'gelu_pytorch_tanh'")
    params = config.get("rope_parameters") or {}
    full, local = params.get("full_attention"), params.get("sliding_attention")
    if local is not None and local.get("rope_type", "default") != "default":
      raise UserError(f"{path} scales RoPE on the sliding layers, which jaxtrain's Gemma 3 does not")
    # The Llama's reader, on a config whose RoPE is the full layers' (5.x nests it per layer type).
    plain = {"head_dim": 256, "tie_word_embeddings": True, **config, "hidden_act": "silu",
             "attention_bias": False, "rope_parameters": full}
    model, extras = super().from_hf_config(plain, path)
    layers = model["num_layers"]
    pattern = config.get("sliding_window_pattern") or config.get("_sliding_window_pattern") or PATTERN
    types = config.get("layer_types") or [gemma3.LAYER_TYPES[(i + 1) % pattern == 0] for i in range(layers)]
    local_theta = local["rope_theta"] if local else config.get("rope_local_base_freq", 10000.0)
    model.update(rope_local_theta=local_theta, sliding_window=config.get("sliding_window", 4096),
                 layer_types=tuple(types), query_pre_attn_scalar=config.get("query_pre_attn_scalar", 256))
    return model, extras

  def to_hf_config(self, module, context_length, dtype, special):
    config = super().to_hf_config(module, context_length, dtype, special)
    for key in ("hidden_act", "mlp_bias", "rope_theta", "rope_scaling"):
      del config[key]
    full = {"rope_type": "default", **(module.rope_scaling or {}), "rope_theta": module.rope_theta}
    return {**config, "hidden_activation": "gelu_pytorch_tanh", "layer_types": list(module.kinds),
            "sliding_window": module.sliding_window, "query_pre_attn_scalar": module.query_pre_attn_scalar,
            "final_logit_softcapping": None, "attn_logit_softcapping": None, "use_bidirectional_attention": False,
            "rope_parameters": {"full_attention": full,
                                "sliding_attention": {"rope_type": "default", "rope_theta": module.rope_local_theta}}}

  # ---- GGUF ----------------------------------------------------------------------------

  def gguf_offset(self, hf_name):
    return 1.0 if hf_name.endswith("norm.weight") else 0.0

  def gguf_config(self, config, f):
    a = f.arch_value
    layers, heads = config["num_hidden_layers"], config["num_attention_heads"]
    pattern = a("attention.sliding_window_pattern")  # Per layer, True for sliding (jaxtrain's exports).
    if isinstance(pattern, list):
      config["layer_types"] = [gemma3.LAYER_TYPES[not sliding] for sliding in pattern]
    config["rope_local_base_freq"] = float(str(np.float32(a("rope.freq_base_swa", 10000.0))))  # As lm.gguf reads floats.
    scale = a("attention.scale")
    # llama.cpp's rule: head_dim, except Gemma 3 27B (62 layers), whose scalar is dim / heads.
    default = config["hidden_size"] // heads if layers == 62 else config["head_dim"]
    config["query_pre_attn_scalar"] = round(scale ** -2, 4) if scale else default
    tokens = f.value("tokenizer.ggml.tokens") or []
    if "<end_of_turn>" in tokens:  # A chat turn ends there (HF's generation_config lists it as EOS).
      config["eos_token_id"] = sorted(set(config["eos_token_id"] or []) | {tokens.index("<end_of_turn>")})
    return config

  def gguf_metadata(self, writer, module):
    writer.add_rope_freq_base_swa(module.rope_local_theta)
    writer.add_sliding_window_pattern([kind == "sliding_attention" for kind in module.kinds])
    writer.add_attention_scale(module.query_pre_attn_scalar ** -0.5)
    default = tuple(gemma3.LAYER_TYPES[(i + 1) % PATTERN == 0] for i in range(module.num_layers))
    if module.kinds != default or module.rope_local_theta != 10000.0 or module.query_pre_attn_scalar != module.head_size:
      logging.warning("llama.cpp's gemma3 assumes every %dth layer full, a local RoPE base of 10000 and "
                      "query_pre_attn_scalar = head_dim; this model differs, so llama.cpp will compute otherwise",
                      PATTERN)
