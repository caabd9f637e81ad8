"""The Qwen3 family (dense Qwen3 models): Hugging Face's Qwen3ForCausalLM, a Llama with an
RMSNorm over head_dim on each head of q and k before RoPE (`self_attn.q_norm.weight`,
`self_attn.k_norm.weight`) and no biases. Its sliding window is read as Qwen2's.
"""

from jaxtrain.errors import UserError
from jaxtrain.lm import families
from jaxtrain.lm.families import qwen2


@families.register
class Qwen3(qwen2.Qwen2):
  title = "Qwen3"
  model_name = "qwen3"
  architecture = "Qwen3ForCausalLM"
  model_type = "qwen3"
  gguf_arch = "qwen3"
  fields = {"attention_bias": False, "qk_norm": True}

  def from_hf_config(self, config, path):
    if config.get("attention_bias"):
      raise UserError(f"{path} sets attention_bias=True; Qwen3 then biases o_proj too, which jaxtrain's model cannot")
    return super().from_hf_config({"head_dim": 128, **config}, path)  # transformers' Qwen3 default head_dim.

  def to_hf_config(self, module, context_length, dtype, special):
    return {**super().to_hf_config(module, context_length, dtype, special), "attention_bias": False}
