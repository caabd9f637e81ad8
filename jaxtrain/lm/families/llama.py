"""The Llama family (Llama 2/3, SmolLM, TinyLlama, ...): Hugging Face's LlamaForCausalLM.

Parameter names map one to one (see `jaxtrain.models.llama`): HF's Linear weights are
[out, in] and Flax kernels [in, out], so kernels are transposed on the way in and out.
config.json is read as transformers 4.x writes it (`rope_theta`, `rope_scaling`) and as
5.x does (`rope_parameters`); we write the 4.x keys, which both read.
"""

import re

from jaxtrain.errors import UserError
from jaxtrain.lm import families
from jaxtrain.models import llama


@families.register
class Llama(families.Family):
  title = "Llama"
  model_name = "llama"
  architecture = "LlamaForCausalLM"
  model_type = "llama"
  stacked_prefix = "layers/"
  gguf_arch = "llama"
  gguf_permutes_qk = True
  # Old checkpoints saved RoPE's buffer (recomputed here); tied ones may store the head's copy
  # of the embedding (an untied model reads it, so it is never left over there).
  ignored = re.compile(r"rotary_emb\.inv_freq$|^lm_head\.weight$")

  def module(self, **kwargs):
    return llama.Llama(**kwargs)

  def from_hf_config(self, config, path):
    for key in ("attention_bias", "mlp_bias"):
      if config.get(key):
        raise UserError(f"{path} sets {key}=True; jaxtrain's Llama has no biases")
    if config.get("hidden_act", "silu") != "silu":
      raise UserError(f"{path} sets hidden_act={config['hidden_act']!r}; jaxtrain's Llama uses 'silu'")
    theta, scaling = _rope(config, path)
    heads = config["num_attention_heads"]
    model = dict(vocab_size=config["vocab_size"], dim=config["hidden_size"], num_layers=config["num_hidden_layers"],
                 num_heads=heads, num_kv_heads=config.get("num_key_value_heads") or heads,
                 head_dim=config.get("head_dim") or config["hidden_size"] // heads,
                 mlp_dim=config["intermediate_size"], rope_theta=theta, rope_scaling=scaling,
                 norm_eps=config.get("rms_norm_eps", 1e-6),
                 tie_embeddings=bool(config.get("tie_word_embeddings", False)))
    eos = config.get("eos_token_id")
    extras = dict(context_length=config.get("max_position_embeddings", 2048), bos_id=config.get("bos_token_id"),
                  eos_ids=[] if eos is None else eos if isinstance(eos, list) else [eos])
    return model, extras

  def to_hf_config(self, module, context_length, dtype, special):
    if type(self) is Llama:  # pylint: disable=unidiomatic-typecheck  (the subclasses check their own fields)
      for field, family in (("attention_bias", "qwen2"), ("qk_norm", "qwen3"), ("sliding_window", "mistral")):
        if getattr(module, field, None):
          raise UserError(f"a LlamaForCausalLM has no {field}, which this model sets: train it as "
                          f"model.name='{family}' to export it as that family")
    scaling = dict(module.rope_scaling) if module.rope_scaling else None
    return {"architectures": [self.architecture], "model_type": self.model_type, "vocab_size": module.vocab_size,
            "hidden_size": module.dim, "intermediate_size": module.hidden_size,
            "num_hidden_layers": module.num_layers, "num_attention_heads": module.num_heads,
            "num_key_value_heads": module.kv_heads, "head_dim": module.head_size, "hidden_act": "silu",
            "max_position_embeddings": context_length, "rms_norm_eps": module.norm_eps,
            "rope_theta": module.rope_theta, "rope_scaling": scaling, "tie_word_embeddings": module.tie_embeddings,
            "attention_bias": False, "mlp_bias": False, "initializer_range": 0.02, "torch_dtype": dtype,
            "use_cache": True, "bos_token_id": special.get("bos_token_id"),
            "eos_token_id": special.get("eos_token_id"), "pad_token_id": special.get("pad_token_id")}

  def hf_name(self, path, layer=None):
    parts = path.split("/")
    if parts[0] == "layers":
      parts[0] = f"layers_{layer}"
    head, leaf = parts[:-1], {"kernel": "weight", "scale": "weight", "embedding": "weight"}[parts[-1]]
    if head[0].startswith("layers_"):
      head = ["model", "layers", head[0][len("layers_"):]] + head[1:]
    elif head[0] != "lm_head":
      head = ["model"] + head
    return ".".join(head + [leaf]), parts[-1] == "kernel"


def _rope(config, path):
  """(theta, rope_scaling or None) from either generation of config.json."""
  params = config.get("rope_parameters") or {}
  scaling = dict(params or config.get("rope_scaling") or {})
  theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
  kind = scaling.pop("rope_type", scaling.pop("type", "default"))
  scaling.pop("rope_theta", None)
  if kind == "default":
    return theta, None
  if kind not in llama.ROPE_SCALINGS:
    raise UserError(f"{path} asks for rope scaling '{kind}'; jaxtrain implements {', '.join(llama.ROPE_SCALINGS)}")
  keep = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
  return theta, {"rope_type": kind, **{k: v for k, v in scaling.items() if k in keep}}
