"""A small convolutional network: conv blocks, a dense layer, a classifier head.

Two XLA:CPU kernels dominate its step (measured by scripts/bench_digits.py on the digits
CNN, 2-core CPU, 2026-11-24): `nn.max_pool`'s gradient (select-and-scatter, which XLA:CPU
runs as a reduce-window over index arrays and a scatter: 2.0 ms of a 13 ms step) and the
convolutions' kernel gradients (YNNPACK). So the 2x2 pool here is a max over a reshape (the
same function; its gradient is a compare and a select: 0.4-0.9 ms), which made the step
1.18-1.24x faster; and `conv='im2col'` computes each 3x3 convolution as one matmul over 9
shifted copies of the input (same parameters, outputs within 4e-7), 1.75-1.79x with both,
ahead of PyTorch eager (1.26-1.62x) and torch.compile (1.37-1.54x) on that machine. Both
are options (`pool='reshape'`, `conv='im2col'`) rather than the default: the defaults are
the kernels GPUs and TPUs run fastest, and other float rounding would change every
published digits figure (seed 0 reads 0.9916 with the reshape pool, 0.9889 without).
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxtrain.errors import UserError
from jaxtrain.models import MODELS

CONVS = ("xla", "im2col")
POOLS = ("window", "reshape")


def max_pool_2x2(x):
  """2x2 max-pool, stride 2, of NHWC `x` with even H and W: a max over a reshape."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class Im2ColConv(nn.Module):
  """A 3x3 'SAME' convolution with nn.Conv's parameters (kernel [3, 3, C, F], bias),
  computed as one [B*H*W, 9C] x [9C, F] matmul over the 9 shifted copies of the input."""

  features: int
  use_bias: bool
  dtype: str

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, c, self.features), jnp.float32)
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    # Channel (dy * 3 + dx) * C + c of the patches: the order of kernel.reshape(9 * C, F).
    patches = jnp.concatenate([padded[:, dy:dy + h, dx:dx + w, :] for dy in range(3) for dx in range(3)], axis=-1)
    y = (patches.reshape(b * h * w, 9 * c) @ kernel.astype(self.dtype).reshape(9 * c, -1)).reshape(b, h, w, -1)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(self.dtype)
    return y


@MODELS.register("cnn")
class CNN(nn.Module):
  """3x3 conv blocks (optionally batch-normed), a 2x2 max-pool after each `pool_every`
  blocks, then a dense layer with dropout whose output is the pre-logit representation.

  Returns (logits, out): out['pre_logits'], the dense layer's output [B, dense], and
  out['conv_features'], the conv blocks' output after the last pool, flattened (the dense
  layer's input, [B, H' * W' * features[-1]]): a more generic representation for probes
  of new classes (experiments/digits_transfer.py). Neither changes params or logits."""

  num_classes: int
  features: Sequence[int] = (32, 64)
  pool_every: int = 2
  dense: int = 128
  dropout: float = 0.0
  batch_norm: bool = True
  dtype: str = "float32"  # Of the computation; params stay float32 ('bfloat16': mixed precision).
  conv: str = "xla"       # 'im2col': each convolution as one matmul (faster on CPUs, see above).
  pool: str = "window"    # 'reshape': the 2x2 max-pool as a max over a reshape (faster on CPUs).

  def __post_init__(self):
    for key, value, allowed in (("conv", self.conv, CONVS), ("pool", self.pool, POOLS)):
      if value not in allowed:
        raise UserError(f"model.{key} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x, *, train):
    x = x.astype(self.dtype)
    for i, width in enumerate(self.features):
      if self.conv == "im2col":
        x = Im2ColConv(width, not self.batch_norm, self.dtype, name=f"Conv_{i}")(x)
      else:
        x = nn.Conv(width, (3, 3), use_bias=not self.batch_norm, dtype=self.dtype)(x)
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x)
      x = nn.relu(x)
      if (i + 1) % self.pool_every == 0:
        even = x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0
        x = max_pool_2x2(x) if self.pool == "reshape" and even else nn.max_pool(x, (2, 2), strides=(2, 2))
    conv_features = x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.dense, dtype=self.dtype)(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
    return logits, {"pre_logits": x, "conv_features": conv_features}
