"""The Qwen2 family (Qwen2, Qwen2.5): Hugging Face's Qwen2ForCausalLM, a Llama with biases on
q/k/v_proj (always: transformers' Qwen2 has no switch for them), HF's `q_proj.bias` etc.

Its sliding window is one per model here: `use_sliding_window` with `max_window_layers`
(or `layer_types`) that slide some layers and not others is refused in one line.
"""

from jaxtrain.errors import UserError
from jaxtrain.lm import families
from jaxtrain.lm.families import llama


@families.register
class Qwen2(llama.Llama):
  title = "Qwen2"
  model_name = "qwen2"
  architecture = "Qwen2ForCausalLM"
  model_type = "qwen2"
  gguf_arch = "qwen2"
  gguf_permutes_qk = False  # llama.cpp's converter permutes the 'llama' architecture's alone.
  fields = {"attention_bias": True, "qk_norm": False}  # What the architecture fixes in the module.

  def from_hf_config(self, config, path):
    # Llama's reading, less its refusal of attention_bias (Qwen2 ignores the key; Qwen3 checks it).
    model, extras = super().from_hf_config({k: v for k, v in config.items() if k != "attention_bias"}, path)
    return {**model, **self.fields, "sliding_window": sliding_window(config, path)}, extras

  def to_hf_config(self, module, context_length, dtype, special):
    for field, want in self.fields.items():
      if getattr(module, field) != want:
        raise UserError(f"a {self.architecture} has {field}={want}, this model {field}={getattr(module, field)}: "
                        f"train it with model.{field}={want} to export it as {self.title}")
    config = super().to_hf_config(module, context_length, dtype, special)
    for key in ("attention_bias", "mlp_bias"):  # Llama's keys; Qwen2's config has neither.
      del config[key]
    window, layers = module.sliding_window, module.num_layers
    config.update(architectures=[self.architecture], model_type=self.model_type, use_sliding_window=window is not None,
                  sliding_window=window, max_window_layers=0 if window else layers,
                  layer_types=[("sliding_attention" if window else "full_attention")] * layers)
    return config

  def hf_name(self, path, layer=None):
    if path.endswith("/bias"):  # q/k/v_proj's: beside the kernel's weight, not transposed.
      name, _ = super().hf_name(path[:-len("bias")] + "kernel", layer)
      return name[:-len("weight")] + "bias", False
    return super().hf_name(path, layer)


def sliding_window(config, path):
  """The window every layer of a Qwen2/Qwen3 config slides, or None where none does (as
  transformers reads it: only with use_sliding_window, on layers >= max_window_layers)."""
  window = config.get("sliding_window", 4096) if config.get("use_sliding_window") else None  # Absent: HF's default.
  if window is None:
    return None
  layers = config["num_hidden_layers"]
  start = config.get("max_window_layers", 28)  # transformers' default.
  kinds = config.get("layer_types") or ["sliding_attention" if i >= start else "full_attention" for i in range(layers)]
  if set(kinds) == {"full_attention"}:
    return None
  if set(kinds) != {"sliding_attention"}:
    sliding = sum(kind == "sliding_attention" for kind in kinds)
    raise UserError(f"{path} slides the attention window in {sliding} of {layers} layers (max_window_layers={start}, "
                    f"layer_types); jaxtrain's model has one window for all layers or none")
  return window
