"""Gemma 3 (text, dense): what Hugging Face transformers' `Gemma3ForCausalLM` computes, with
params named after its state dict as the Llama's are (jaxtrain.models.llama), plus
`pre_feedforward_layernorm`, `post_feedforward_layernorm` and `self_attn/{q,k}_norm` in
each layer. What differs from a Llama:
- the input embedding is scaled by sqrt(dim) (in the compute dtype); a tied head reads the
  embedding unscaled;
- every RMSNorm multiplies by (1 + w), w initialised to zeros (`scale` holds w, as HF's
  `weight` does);
- four norms per layer: `post_attention_layernorm` normalises the attention's output and
  `post_feedforward_layernorm` the MLP's, each before its residual add;
- q and k are RMSNormed over head_dim before RoPE; the attention scale is
  query_pre_attn_scalar**-0.5, not head_dim**-0.5;
- the MLP is down(gelu_tanh(gate(x)) * up(x));
- layers are 'sliding_attention' (a window of `sliding_window` tokens, itself included, and
  RoPE base `rope_local_theta`) or 'full_attention' (RoPE base `rope_theta`, with
  `rope_scaling` if any, as transformers scales only the global layers): `layer_types`, or
  by default every `sliding_window_pattern`-th layer full, the others sliding.
The masks are the Llama's (segment ids, the KV cache's left padding, the window counted in
slots), so training, prefill and cached decoding agree as they do there.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtrain.models import MODELS
from jaxtrain.models.llama import (REMAT_POLICIES, ConfigError, _check_rope_scaling, _dense, _init, apply_rope,
                                   output_logits, rope_tables, unembedding)

LAYER_TYPES = ("sliding_attention", "full_attention")


class RMSNorm(nn.Module):
  """Gemma's: x * rsqrt(mean(x^2) + eps) * (1 + w), in float32."""
  eps: float
  dtype: str

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    return (x * (1.0 + scale)).astype(self.dtype)


class Attention(nn.Module):
  dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  norm_eps: float
  scale: float  # query_pre_attn_scalar ** -0.5.
  dtype: str

  @nn.compact
  def __call__(self, x, cos, sin, mask, cache=None, cache_index=None):
    b, t, _ = x.shape
    tokens = x.reshape(b * t, -1)  # Dense layers on 2-D inputs, as the Llama's (llama.MLP says why).

    def project(heads, name):
      return _dense(heads * self.head_dim, self.dtype, name)(tokens).reshape(b, t, heads, self.head_dim)
    q = RMSNorm(self.norm_eps, self.dtype, name="q_norm")(project(self.num_heads, "q_proj"))
    k = RMSNorm(self.norm_eps, self.dtype, name="k_norm")(project(self.num_kv_heads, "k_proj"))
    v = project(self.num_kv_heads, "v_proj")
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if cache is not None:  # As the Llama: this call's keys and values written into the cache.
      at = (0, cache_index, 0, 0)
      k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), at)
      v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), at)
      cache = {"k": k, "v": v}
    k, v = k.astype(q.dtype), v.astype(q.dtype)
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=cache is None, scale=self.scale)
    return _dense(self.dim, self.dtype, "o_proj")(out.reshape(b * t, -1)).reshape(b, t, self.dim), cache


class MLP(nn.Module):
  dim: int
  mlp_dim: int
  dtype: str

  @nn.compact
  def __call__(self, x):
    tokens = x.reshape(-1, x.shape[-1])
    gate = _dense(self.mlp_dim, self.dtype, "gate_proj")(tokens)
    up = _dense(self.mlp_dim, self.dtype, "up_proj")(tokens)
    out = _dense(self.dim, self.dtype, "down_proj")(jax.nn.gelu(gate, approximate=True) * up)
    return out.reshape(x.shape[:-1] + (self.dim,))


class Block(nn.Module):
  """One decoder layer; returns (x, the updated cache or None)."""
  dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  norm_eps: float
  scale: float
  dtype: str

  @nn.compact
  def __call__(self, x, cos, sin, mask, cache=None, cache_index=None):
    norm = functools.partial(RMSNorm, self.norm_eps, self.dtype)
    h, cache = Attention(self.dim, self.num_heads, self.num_kv_heads, self.head_dim, self.norm_eps, self.scale,
                         self.dtype, name="self_attn")(norm(name="input_layernorm")(x), cos, sin, mask, cache,
                                                       cache_index)
    x = x + norm(name="post_attention_layernorm")(h)
    h = MLP(self.dim, self.mlp_dim, self.dtype, name="mlp")(norm(name="pre_feedforward_layernorm")(x))
    return x + norm(name="post_feedforward_layernorm")(h), cache


@MODELS.register("gemma3")
class Gemma3(nn.Module):
  """Gemma 3 decoder: the Llama's call (`tokens`, train, segment_ids, positions, cache,
  cache_index, key_valid, only_last, head) and outputs (float32 logits, {'pre_logits', 'cache'}
  and, with head=False, 'unembed')."""

  scans_layers = False  # Not a field: init_from.resolve_model drops an experiment's scan_layers=True.
  splits_head = True

  vocab_size: int
  dim: int = 640
  num_layers: int = 18
  num_heads: int = 4
  num_kv_heads: int | None = None   # None: num_heads.
  head_dim: int | None = None       # None: dim // num_heads.
  mlp_dim: int | None = None        # None: 4 * dim.
  rope_theta: float = 1000000.0     # Full-attention layers'.
  rope_local_theta: float = 10000.0  # Sliding layers'.
  rope_scaling: dict | None = None  # Full-attention layers' (HF's 'linear' on Gemma 3 4B+).
  sliding_window: int | None = 512  # None: the sliding layers see everything too.
  layer_types: tuple | None = None  # Per layer 'sliding_attention' or 'full_attention'; None: the pattern.
  sliding_window_pattern: int = 6   # Layer i is full when (i + 1) % pattern == 0.
  query_pre_attn_scalar: float = 256.0
  norm_eps: float = 1e-6
  tie_embeddings: bool = True
  dtype: str = "float32"
  scan_layers: bool = False         # Refused: the layers alternate in kind.
  remat: str = "none"

  def __post_init__(self):
    if self.scan_layers:
      raise ConfigError("model.scan_layers=True is not supported for gemma3 (its layers differ in kind); unset it")
    if self.remat not in REMAT_POLICIES:
      raise ConfigError(f"model.remat must be one of {', '.join(map(repr, REMAT_POLICIES))}, got {self.remat!r}")
    if self.num_heads % self.kv_heads:
      raise ConfigError(f"model.num_kv_heads={self.kv_heads} must divide model.num_heads={self.num_heads}")
    if self.head_dim is None and self.dim % self.num_heads:
      raise ConfigError(f"model.num_heads={self.num_heads} must divide model.dim={self.dim} (or set head_dim)")
    if self.head_size % 2:
      raise ConfigError(f"the head dimension must be even for RoPE, got {self.head_size}")
    _check_rope_scaling(self.rope_scaling)
    window = self.sliding_window
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
      raise ConfigError(f"model.sliding_window must be a number of tokens >= 1 (or None), got {window!r}")
    types = self.layer_types
    if types is not None and (len(types) != self.num_layers or any(k not in LAYER_TYPES for k in types)):
      raise ConfigError(f"model.layer_types must list {self.num_layers} of {', '.join(LAYER_TYPES)}, got {types!r}")
    if types is not None and not isinstance(types, tuple):
      object.__setattr__(self, "layer_types", tuple(types))  # A config gives a list; keep it hashable.
    super().__post_init__()

  @property
  def kv_heads(self):
    return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

  @property
  def head_size(self):
    return self.dim // self.num_heads if self.head_dim is None else self.head_dim

  @property
  def hidden_size(self):
    return 4 * self.dim if self.mlp_dim is None else self.mlp_dim

  @property
  def kinds(self):
    """Each layer's 'sliding_attention' or 'full_attention'."""
    if self.layer_types is not None:
      return tuple(self.layer_types)
    return tuple(LAYER_TYPES[(i + 1) % self.sliding_window_pattern == 0] for i in range(self.num_layers))

  def flops_per_token(self, seq_len):
    """Training FLOPs per token, counted as the Llama's (llama.flops_per_token), each layer's
    attention over its own span of keys."""
    d, hd, window = self.dim, self.head_size, self.sliding_window
    per_layer = d * (self.num_heads + 2 * self.kv_heads) * hd + self.num_heads * hd * d + 3 * d * self.hidden_size
    windowed = seq_len if window is None or seq_len <= window else 2 * window - window * window / seq_len
    twice_keys = sum(windowed if kind == "sliding_attention" else seq_len for kind in self.kinds)
    return 6 * (self.num_layers * per_layer + d * self.vocab_size) + 6 * twice_keys * self.num_heads * hd

  @nn.compact
  def __call__(self, tokens, *, train, segment_ids=None, positions=None, cache=None, cache_index=None,
               key_valid=None, only_last=False, head=True):
    del train  # No dropout.
    b, t = tokens.shape
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    tables = {"full_attention": rope_tables(positions, self.head_size, self.rope_theta, self.rope_scaling),
              "sliding_attention": rope_tables(positions, self.head_size, self.rope_local_theta)}
    # The Llama's masks: [B, 1, T, S], one head broadcast over all; the window on slot distances.
    mask = None if segment_ids is None else segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
    query = jnp.arange(t)[:, None] + (0 if cache is None else cache_index)
    keys = jnp.arange(t if cache is None else key_valid.shape[1])[None, :]
    if cache is not None:
      mask = key_valid[:, None, None, :] & (keys <= query)[None, None]
    masks = {"full_attention": mask, "sliding_attention": mask}
    if self.sliding_window is not None:
      band = jnp.broadcast_to(keys > query - self.sliding_window, (b, 1) + query.shape[:1] + keys.shape[1:])
      masks["sliding_attention"] = band if mask is None else mask & band

    embed = nn.Embed(self.vocab_size, self.dim, dtype=self.dtype, embedding_init=_init(), name="embed_tokens")
    x = embed(tokens) * jnp.asarray(math.sqrt(self.dim), self.dtype)  # HF casts the scale to the dtype first.
    block = Block
    if self.remat != "none":
      block = nn.remat(Block, policy=REMAT_POLICIES[self.remat], prevent_cse=True)
    caches = []
    for i, kind in enumerate(self.kinds):
      layer = block(dim=self.dim, num_heads=self.num_heads, num_kv_heads=self.kv_heads, head_dim=self.head_size,
                    mlp_dim=self.hidden_size, norm_eps=self.norm_eps, scale=self.query_pre_attn_scalar ** -0.5,
                    dtype=self.dtype, name=f"layers_{i}")
      x, layer_cache = layer(x, *tables[kind], masks[kind], None if cache is None else cache[i], cache_index)
      caches.append(layer_cache)
    x = RMSNorm(self.norm_eps, self.dtype, name="norm")(x)
    if only_last:
      x = x[:, -1:]
    out = {"pre_logits": x}
    if cache is not None:
      out["cache"] = caches
    if not head:
      return None, {**out, "unembed": unembedding(self, embed, self.tie_embeddings, self.dtype)}
    return output_logits(x, embed, self.vocab_size, self.tie_embeddings, self.dtype), out

  def init_cache(self, batch_size, length, dtype=None):
    """An empty KV cache: a list of {'k', 'v'} [B, length, kv_heads, head_dim], one per layer
    (sliding layers keep every slot too; the mask hides the old ones)."""
    shape = (batch_size, length, self.kv_heads, self.head_size)
    return [{"k": jnp.zeros(shape, dtype or self.dtype), "v": jnp.zeros(shape, dtype or self.dtype)}
            for _ in range(self.num_layers)]
