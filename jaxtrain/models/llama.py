"""Llama: a decoder-only transformer that computes what Hugging Face transformers'
`LlamaForCausalLM` computes, with its parameters named after HF's state dict so that a
checkpoint converts by renaming and transposing:

    HF state dict (torch Linear weights are [out, in])   params here (Flax kernels are [in, out])
    model.embed_tokens.weight [V, D]                      embed_tokens/embedding [V, D]
    model.layers.{i}.self_attn.{q,k,v,o}_proj.weight      layers_{i}/self_attn/{q,k,v,o}_proj/kernel  (.T)
    model.layers.{i}.self_attn.{q,k,v}_proj.bias          layers_{i}/self_attn/{q,k,v}_proj/bias  (attention_bias)
    model.layers.{i}.self_attn.{q,k}_norm.weight          layers_{i}/self_attn/{q,k}_norm/scale   (qk_norm)
    model.layers.{i}.mlp.{gate,up,down}_proj.weight       layers_{i}/mlp/{gate,up,down}_proj/kernel   (.T)
    model.layers.{i}.input_layernorm.weight               layers_{i}/input_layernorm/scale
    model.layers.{i}.post_attention_layernorm.weight      layers_{i}/post_attention_layernorm/scale
    model.norm.weight                                     norm/scale
    lm_head.weight [V, D]                                 lm_head/kernel [D, V] (.T; absent when tied)

With `scan_layers=True` the layers are one module `layers` whose arrays carry a leading
axis of length num_layers: layers_0 .. layers_{L-1} stacked on axis 0.

RoPE follows HF's "rotate_half" layout (dimension i pairs with i + head_dim/2); HF's
converted checkpoints are permuted for it, Meta's original ones are not. `rope_scaling`
takes HF's "llama3" (Llama 3.1+) and "linear" frequencies.

Three fields make it the other families of `jaxtrain.lm.families`, each off by default (the
parameter tree and the computation then stay a Llama's): `attention_bias` (Qwen2: biases on
q/k/v_proj, HF's `q_proj.bias`; o_proj and the MLP have none), `qk_norm` (Qwen3: an RMSNorm
over head_dim on each head of q and k before RoPE, `self_attn/{q,k}_norm/scale`) and
`sliding_window` (Mistral: a query attends to the last `sliding_window` tokens, itself
included, as transformers' `kv_idx > q_idx - sliding_window`; counted in tokens of the row,
so left padding and packing do not move it).

Decoding with a KV cache (`jaxtrain.lm.sampling`): pass `cache` (from `init_cache`), the slot
`cache_index` where `tokens` go, and `key_valid` [B, S] (False on left padding); the model
writes the new keys and values there, attends to every valid slot up to its own, and returns
the updated cache as `out['cache']`.

Dropout, in training only (`train=True`; evaluation and decoding never drop): on the
embeddings (`embedding_dropout`), on the attention probabilities (`attention_dropout`, HF's
field of that name), and on each sublayer's output before it joins the residual stream
(`residual_dropout`; `dropout`, its older name, when it is unset). A rate of 0 draws no
random bits and computes exactly what a model without the field computes; so does every rate
at train=False.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtrain.errors import UserError
from jaxtrain.models import MODELS

# 'dots' saves the outputs of matmuls without batch dimensions: the weight projections
# (q/k/v/o, gate/up/down), costly to recompute and only O(tokens x width) to keep; it
# recomputes the norms, RoPE, SiLU and attention, whose batched einsums (batch and head
# dims) and [T, T] probabilities are what make activations big at long sequence lengths.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,  # Keeps only each layer's input.
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class ConfigError(UserError, ValueError):
  """A bad model config: a ValueError, and a UserError so the launcher prints one line."""


def _init():
  return nn.initializers.normal(stddev=0.02)  # HF's initializer_range.


class RMSNorm(nn.Module):
  eps: float
  dtype: str

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    x = x.astype(jnp.float32)  # bfloat16 squares lose too much in the mean.
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    return (x * scale).astype(self.dtype)


ROPE_SCALINGS = ("default", "llama3", "linear")


def rope_frequencies(head_dim, theta, scaling=None):
  """The inverse wavelengths [head_dim / 2] of RoPE, with HF's `rope_scaling` applied.

  'llama3' (Llama 3.1+): wavelengths longer than original_max_position_embeddings /
  low_freq_factor are stretched by `factor`, those shorter than .../high_freq_factor kept,
  and the band between interpolated linearly in original_max_position_embeddings / wavelength.
  'linear': every frequency divided by `factor` (positions squeezed)."""
  inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  kind = (scaling or {}).get("rope_type", "default")
  if kind == "linear":
    return inv_freq / scaling["factor"]
  if kind == "llama3":
    factor, context = scaling["factor"], scaling["original_max_position_embeddings"]
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    ratio = context * inv_freq / (2 * math.pi)  # original context / wavelength.
    blend = jnp.clip((ratio - low) / (high - low), 0.0, 1.0)  # 0: stretch fully, 1: keep.
    return (1 - blend) * inv_freq / factor + blend * inv_freq
  return inv_freq


def rope_tables(positions, head_dim, theta, scaling=None):
  """cos and sin [B, T, 1, head_dim] (float32) for rotating queries and keys."""
  inv_freq = rope_frequencies(head_dim, theta, scaling)
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x, cos, sin):
  x32 = x.astype(jnp.float32)
  first, second = jnp.split(x32, 2, axis=-1)
  return (x32 * cos + jnp.concatenate([-second, first], axis=-1) * sin).astype(x.dtype)


def _dense(features, dtype, name, bias=False):
  return nn.Dense(features, use_bias=bias, dtype=dtype, kernel_init=_init(), name=name)


class Attention(nn.Module):
  dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  dtype: str
  dropout: float = 0.0        # On the attention probabilities.
  deterministic: bool = True
  bias: bool = False          # On q/k/v_proj (Qwen2).
  qk_norm: bool = False       # RMSNorm of each head of q and k (Qwen3).
  norm_eps: float = 1e-5      # qk_norm's.

  @nn.compact
  def __call__(self, x, cos, sin, mask, cache=None, cache_index=None):
    b, t, _ = x.shape
    tokens = x.reshape(b * t, -1)  # Dense layers on 2-D inputs: see MLP.

    def project(heads, name):
      return _dense(heads * self.head_dim, self.dtype, name, self.bias)(tokens).reshape(b, t, heads, self.head_dim)
    q = project(self.num_heads, "q_proj")
    k, v = project(self.num_kv_heads, "k_proj"), project(self.num_kv_heads, "v_proj")
    if self.qk_norm:  # Over head_dim, one scale shared by all heads; before RoPE, as HF's Qwen3.
      q = RMSNorm(self.norm_eps, self.dtype, name="q_norm")(q)
      k = RMSNorm(self.norm_eps, self.dtype, name="k_norm")(k)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if cache is not None:  # Decoding: attend to the cache with this call's keys written in.
      at = (0, cache_index, 0, 0)
      k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), at)
      v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), at)
      cache = {"k": k, "v": v}
    # K and V keep their fewer heads (GQA is native here); the segment mask has one head
    # that broadcasts over all, and is_causal adds the triangle. implementation=None is XLA
    # in jax 0.10; 'cudnn' would take the mask as a dense [B, 1, T, T] bias.
    k, v = k.astype(q.dtype), v.astype(q.dtype)
    if self.dropout > 0 and not self.deterministic:
      drop = nn.Dropout(self.dropout, deterministic=False)
      out = attention(q, k, v, mask, cache is None, drop)
    else:
      out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=cache is None)
    return _dense(self.dim, self.dtype, "o_proj")(out.reshape(b * t, -1)).reshape(b, t, self.dim), cache


def attention(q, k, v, mask, is_causal, drop_probs):
  """jax.nn.dot_product_attention's XLA computation written out so that `drop_probs` can
  drop attention probabilities, which the fused call cannot: q [B, T, N, H], k and v
  [B, S, K, H] (K divides N), mask None or [B, 1, T, S]. Used only where attention dropout
  is on: elsewhere the fused call stays, and with it the logits (and the HF parity)."""
  b, t, n, hd = q.shape
  s, kv = k.shape[1], k.shape[2]
  q = q.reshape(b, t, kv, n // kv, hd)  # Query head n reads key-value head n // (N / K).
  logits = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=jnp.float32) / math.sqrt(hd)
  keep = jnp.ones((t, s), bool) if mask is None else mask[:, :, None]  # [B, 1, 1, T, S]
  if is_causal:
    keep = keep & jnp.tril(jnp.ones((t, s), bool))
  # jax's large negative, not -inf: a row with every key masked stays finite.
  logits = jnp.where(keep, logits, -0.7 * jnp.finfo(jnp.float32).max)
  probs = drop_probs(jax.nn.softmax(logits, axis=-1)).astype(v.dtype)
  return jnp.einsum("bkgts,bskh->btkgh", probs, v).reshape(b, t, n, hd)


class MLP(nn.Module):
  dim: int
  mlp_dim: int
  dtype: str

  @nn.compact
  def __call__(self, x):
    # The Dense layers see [tokens, features], not [B, T, features]: with two batch axes,
    # XLA:CPU computes the weights' (and LoRA's) gradients through transposing copies of the
    # activations. SmolLM2's MLP, 30 layers, 4 x 256 tokens, forward and backward on 2 cores
    # (jax 0.10.2): full training 4.39 s 3-D, 3.38 s 2-D; LoRA 4.12 s, 2.50 s.
    tokens = x.reshape(-1, x.shape[-1])
    gate = _dense(self.mlp_dim, self.dtype, "gate_proj")(tokens)
    up = _dense(self.mlp_dim, self.dtype, "up_proj")(tokens)
    return _dense(self.dim, self.dtype, "down_proj")(nn.silu(gate) * up).reshape(x.shape[:-1] + (self.dim,))


class Block(nn.Module):
  """One decoder layer. Returns (x, updated cache or None): nn.scan carries x and stacks
  the caches."""

  dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  norm_eps: float
  residual_dropout: float
  attention_dropout: float
  dtype: str
  deterministic: bool  # A field, not an argument: nn.scan and nn.remat then need no static args.
  attention_bias: bool = False
  qk_norm: bool = False

  @nn.compact
  def __call__(self, x, cos, sin, mask, cache=None, cache_index=None):
    # One module called twice: the two calls draw different masks (flax counts the calls).
    drop = nn.Dropout(self.residual_dropout, deterministic=self.deterministic)
    h = RMSNorm(self.norm_eps, self.dtype, name="input_layernorm")(x)
    h, cache = Attention(self.dim, self.num_heads, self.num_kv_heads, self.head_dim, self.dtype,
                         self.attention_dropout, self.deterministic, bias=self.attention_bias, qk_norm=self.qk_norm,
                         norm_eps=self.norm_eps, name="self_attn")(h, cos, sin, mask, cache, cache_index)
    x = x + drop(h)
    h = RMSNorm(self.norm_eps, self.dtype, name="post_attention_layernorm")(x)
    x = x + drop(MLP(self.dim, self.mlp_dim, self.dtype, name="mlp")(h))
    return x, cache


@MODELS.register("llama")
class Llama(nn.Module):
  """Llama decoder. `__call__(tokens [B, T] int, *, train, segment_ids=None, positions=None)`
  returns (logits float32 [B, T, vocab_size], {'pre_logits': final normed states [B, T, dim]}).

  segment_ids [B, T]: packed documents; token i attends to j only if j <= i and both have the
  same id (0 marks padding, which attends only to padding and so stays finite).
  positions [B, T]: RoPE positions, default 0..T-1 in every row; with packing pass them
  restarting at 0 in each document, as the documents alone would have them.
  cache, cache_index, key_valid: decoding, see the module doc. only_last: logits of the
  last position alone, [B, 1, vocab_size] (a prompt's prefill needs no more). head=False:
  no logits (None) but out['unembed'], the head as a function of final states, for a
  caller that needs logits at a few positions only (step.py scores the weighted ones).
  """

  splits_head = True  # Takes head=False (see above).

  vocab_size: int
  dim: int = 256
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: int | None = None  # None: num_heads (multi-head attention); fewer: grouped-query.
  head_dim: int | None = None     # None: dim // num_heads.
  mlp_dim: int | None = None      # None: Meta's rule, int(8 * dim / 3) rounded up to a multiple of 256.
  rope_theta: float = 10000.0
  rope_scaling: dict | None = None  # HF's: {'rope_type': 'llama3', 'factor': 8.0, ...}, see rope_frequencies.
  norm_eps: float = 1e-5
  tie_embeddings: bool = False
  attention_bias: bool = False    # Biases on q/k/v_proj (Qwen2).
  qk_norm: bool = False           # RMSNorm over head_dim of q and k before RoPE (Qwen3).
  sliding_window: int | None = None  # Attend to the last N tokens only, itself included (Mistral).
  # Dropout rates in [0, 1), in training only (see the module doc).
  embedding_dropout: float = 0.0  # On the token embeddings, before the first layer.
  attention_dropout: float = 0.0  # On the attention probabilities (HF's attention_dropout).
  residual_dropout: float | None = None  # On each sublayer's output before the residual add; None: `dropout`.
  dropout: float = 0.0      # The residual rate's older name, kept for existing configs.
  dtype: str = "float32"    # Of the computation; params stay float32, logits come back float32.
  scan_layers: bool = False  # One nn.scan over stacked layers: compile time independent of depth.
  remat: str = "none"       # Recompute activations in the backward pass: 'none', 'full' or 'dots'.

  def __post_init__(self):
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
    for key in ("embedding_dropout", "attention_dropout", "residual_dropout", "dropout"):
      rate = getattr(self, key)
      if key == "residual_dropout" and rate is None:
        continue
      # `not 0 <= rate < 1` also refuses NaN; 1 would drop everything (and divide by 0).
      if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise ConfigError(f"model.{key} must be a rate in [0, 1), got {rate!r}")
    if self.residual_dropout is not None and self.dropout:
      raise ConfigError(f"model.dropout={self.dropout} is model.residual_dropout's older name: set one, not both")
    super().__post_init__()

  @property
  def residual_rate(self):
    return self.dropout if self.residual_dropout is None else self.residual_dropout

  @property
  def kv_heads(self):
    return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

  @property
  def head_size(self):
    return self.dim // self.num_heads if self.head_dim is None else self.head_dim

  @property
  def hidden_size(self):
    """The MLP width (Llama-2 7B: dim 4096 -> 11008)."""
    return 256 * math.ceil(int(8 * self.dim / 3) / 256) if self.mlp_dim is None else self.mlp_dim

  def flops_per_token(self, seq_len):
    """Training FLOPs per token (the framework's MFU): see the function below."""
    return flops_per_token(self, seq_len)

  @nn.compact
  def __call__(self, tokens, *, train, segment_ids=None, positions=None, cache=None, cache_index=None,
               key_valid=None, only_last=False, head=True):
    b, t = tokens.shape
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    cos, sin = rope_tables(positions, self.head_size, self.rope_theta, self.rope_scaling)
    # [B, 1, T, T]: one head broadcasts over query and key-value heads alike.
    mask = None if segment_ids is None else segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
    # Query i (slot cache_index + i) and key slot j: the causal triangle and the window are on
    # slot distances, which are token distances, left padding being one offset per row.
    query = jnp.arange(t)[:, None] + (0 if cache is None else cache_index)
    keys = jnp.arange(t if cache is None else key_valid.shape[1])[None, :]
    if cache is not None:  # [B, 1, T, S]: valid slots up to each query's own.
      mask = key_valid[:, None, None, :] & (keys <= query)[None, None]
    if self.sliding_window is not None:
      band = jnp.broadcast_to(keys > query - self.sliding_window, (b, 1) + query.shape[:1] + keys.shape[1:])
      mask = band if mask is None else mask & band

    embed = nn.Embed(self.vocab_size, self.dim, dtype=self.dtype, embedding_init=_init(), name="embed_tokens")
    x = nn.Dropout(self.embedding_dropout, deterministic=not train)(embed(tokens))
    block = Block
    if self.remat != "none":
      # prevent_cse guards against XLA merging the recomputation away; a scan body already does.
      block = nn.remat(Block, policy=REMAT_POLICIES[self.remat], prevent_cse=not self.scan_layers)
    sizes = dict(dim=self.dim, num_heads=self.num_heads, num_kv_heads=self.kv_heads, head_dim=self.head_size,
                 mlp_dim=self.hidden_size, norm_eps=self.norm_eps, residual_dropout=self.residual_rate,
                 attention_dropout=self.attention_dropout, dtype=self.dtype, deterministic=not train,
                 attention_bias=self.attention_bias, qk_norm=self.qk_norm)
    if self.scan_layers:  # The cache's arrays are stacked over layers too: scanned along axis 0.
      # split_rngs: each layer its own dropout masks. 'intermediates' stacked like the params:
      # without it, capture_intermediates and sow in the layers are dropped without a word.
      block = nn.scan(block, variable_axes={"params": 0, "intermediates": 0},
                      split_rngs={"params": True, "dropout": True},
                      in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0, nn.broadcast), length=self.num_layers)
      x, cache = block(**sizes, name="layers")(x, cos, sin, mask, cache, cache_index)
    else:  # One cache per layer: each updated in place, where slicing a stacked one would copy it.
      caches = []
      for i in range(self.num_layers):
        x, layer_cache = block(**sizes, name=f"layers_{i}")(x, cos, sin, mask, None if cache is None else cache[i],
                                                            cache_index)
        caches.append(layer_cache)
      cache = None if cache is None else caches
    x = RMSNorm(self.norm_eps, self.dtype, name="norm")(x)
    if only_last:
      x = x[:, -1:]
    out = {"pre_logits": x}
    if cache is not None:
      out["cache"] = cache
    if not head:
      return None, {**out, "unembed": unembedding(self, embed, self.tie_embeddings, self.dtype)}
    return output_logits(x, embed, self.vocab_size, self.tie_embeddings, self.dtype), out

  def init_cache(self, batch_size, length, dtype=None):
    """An empty KV cache for `length` slots: {'k', 'v'} of [B, length, kv_heads, head_dim]
    per layer (a list), or stacked on a leading layer axis with scan_layers (nn.scan then
    slices and restacks it at each call: one copy of the cache per decoded token)."""
    shape = (batch_size, length, self.kv_heads, self.head_size)
    layer = lambda: {"k": jnp.zeros(shape, dtype or self.dtype), "v": jnp.zeros(shape, dtype or self.dtype)}  # noqa: E731
    if self.scan_layers:
      return jax.tree.map(lambda a: jnp.broadcast_to(a, (self.num_layers,) + a.shape), layer())
    return [layer() for _ in range(self.num_layers)]


# Hugging Face families that are this module with a field or two set (jaxtrain.lm.families
# maps each name to its family): fine-tuned from such a directory, a run keeps the family's
# name and so exports as that family again.
for _name in ("qwen2", "qwen3", "mistral"):
  MODELS.register(_name)(Llama)


def output_logits(x, embed, vocab_size, tied, dtype):
  """The logits of final states `x`, from the embedding (tied) or an `lm_head` of the calling
  module, accumulated and returned in float32: bfloat16 logits would round the loss."""
  if tied:
    logits = jnp.einsum("btd,vd->btv", x, embed.embedding.astype(dtype), preferred_element_type=jnp.float32)
  else:
    logits = nn.Dense(vocab_size, use_bias=False, dtype=dtype, kernel_init=_init(), name="lm_head",
                      dot_general=functools.partial(jax.lax.dot_general, preferred_element_type=jnp.float32))(x)
  return logits.astype(jnp.float32)


def unembedding(module, embed, tied, dtype):
  """output_logits as a plain function of states [..., dim], its weight read from `module`'s
  params: no Flax module is called, so it runs inside jax.lax control flow (an `lm_head`
  must already exist: made by init, which computes the logits)."""
  if tied:
    weight, spec = embed.embedding, "...d,vd->...v"
  else:
    weight, spec = module.variables["params"]["lm_head"]["kernel"], "...d,dv->...v"
  return lambda x: jnp.einsum(spec, x.astype(dtype), weight.astype(dtype), preferred_element_type=jnp.float32)


def _check_rope_scaling(scaling):
  if scaling is None:
    return
  kind = scaling.get("rope_type", "default") if hasattr(scaling, "get") else None
  if kind not in ROPE_SCALINGS:
    raise ConfigError(f"model.rope_scaling must be a dict with rope_type one of {', '.join(ROPE_SCALINGS)}, "
                      f"got {scaling!r}")
  needed = {"linear": ("factor",), "llama3": ("factor", "original_max_position_embeddings")}.get(kind, ())
  missing = [key for key in needed if key not in scaling]
  if missing:
    raise ConfigError(f"model.rope_scaling of rope_type '{kind}' needs {', '.join(missing)}")


def sharding_rules(scan_layers=False, tie_embeddings=False, attention_bias=False):
  """Megatron-style tensor parallelism for `parallel.rules`: q/k/v/gate/up split on their
  output dim and o/down on their input dim (one all-reduce per attention and per MLP), the
  embedding and lm_head on the vocabulary; with attention_bias, q/k/v's biases split as
  their outputs are (qk_norm's scales stay whole). Only 'tensor' is named: FSDP comes on top.
  The patterns name `layers_N` or the scanned `layers`, so a rule set for the other layout
  matches nothing instead of misplacing a stacked axis. With GQA, `tensor` must divide
  num_kv_heads * head_dim (and, to split at head boundaries, num_kv_heads)."""
  layers, lead = (r"(^|/)layers/", (None,)) if scan_layers else (r"(^|/)layers_\d+/", ())
  rules = [
      (layers + r"(self_attn/[qkv]_proj|mlp/(gate|up)_proj)/kernel$", lead + (None, "tensor")),
      (layers + r"(self_attn/o_proj|mlp/down_proj)/kernel$", lead + ("tensor", None)),
      (r"(^|/)embed_tokens/embedding$", ("tensor", None)),
  ]
  if attention_bias:
    rules.append((layers + r"self_attn/[qkv]_proj/bias$", lead + ("tensor",)))
  if not tie_embeddings:
    rules.append((r"(^|/)lm_head/kernel$", (None, "tensor")))
  return tuple(rules)


def flops_per_token(model, seq_len):
  """Training FLOPs per token (forward + backward = 3 x forward, 2 per multiply-add), as
  MaxText counts them: 6 x (the layers' matmul params + the unembedding, counted once
  whether tied or not; the embedding lookup is free) + attention's QK^T and PV.
  Attention: the full square is 12 * L * T * heads * head_dim per token; we halve it for
  the causal mask, as current MaxText does (older MaxText releases and PaLM's MFU count the
  full square, so their MFU reads higher for the same speed). A sliding window W < T
  attends to W - W^2 / 2T keys per query on average instead of T / 2. Biases and qk_norm
  are not matmuls: not counted."""
  d, hd, window = model.dim, model.head_size, model.sliding_window
  per_layer = d * (model.num_heads + 2 * model.kv_heads) * hd + model.num_heads * hd * d + 3 * d * model.hidden_size
  matmul_params = model.num_layers * per_layer + d * model.vocab_size
  twice_keys = seq_len if window is None or seq_len <= window else 2 * window - window * window / seq_len
  attention = 6 * model.num_layers * twice_keys * model.num_heads * hd
  return 6 * matmul_params + attention
