"""The Mistral family (Mistral 7B v0.1..v0.3 and its kind): Hugging Face's
MistralForCausalLM, a Llama whose every layer may attend within a sliding window
(`sliding_window`, null for none). transformers' Mistral ignores `layer_types`, so do we.
"""

from jaxtrain.errors import UserError
from jaxtrain.lm import families
from jaxtrain.lm.families import llama


@families.register
class Mistral(llama.Llama):
  title = "Mistral"
  model_name = "mistral"
  architecture = "MistralForCausalLM"
  model_type = "mistral"
  gguf_arch = "llama"  # llama.cpp converts Mistral as a Llama (Q/K permuted, the window not kept).
  gguf_permutes_qk = True

  def from_hf_config(self, config, path):
    model, extras = super().from_hf_config(config, path)
    # transformers' MistralConfig default where the key is absent; null: no window.
    return {**model, "sliding_window": config.get("sliding_window", 4096)}, extras

  def to_hf_config(self, module, context_length, dtype, special):
    for field in ("attention_bias", "qk_norm"):
      if getattr(module, field):
        raise UserError(f"a {self.architecture} has no {field}, but this model has model.{field}=True: it has "
                        f"no Mistral form")
    config = super().to_hf_config(module, context_length, dtype, special)
    for key in ("attention_bias", "mlp_bias"):  # Llama's keys; Mistral's config has neither.
      del config[key]
    return {**config, "architectures": [self.architecture], "model_type": self.model_type,
            "sliding_window": module.sliding_window}
