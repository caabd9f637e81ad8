"""A small convolutional network: conv blocks, a dense layer, a classifier head."""

from typing import Sequence

import flax.linen as nn

from jaxtrain.models import MODELS


@MODELS.register("cnn")
class CNN(nn.Module):
  """3x3 conv blocks (optionally batch-normed), a 2x2 max-pool after each `pool_every`
  blocks, then a dense layer with dropout whose output is the pre-logit representation."""

  num_classes: int
  features: Sequence[int] = (32, 64)
  pool_every: int = 2
  dense: int = 128
  dropout: float = 0.0
  batch_norm: bool = True
  dtype: str = "float32"  # Of the computation; params stay float32 ('bfloat16': mixed precision).

  @nn.compact
  def __call__(self, x, *, train):
    x = x.astype(self.dtype)
    for i, width in enumerate(self.features):
      x = nn.Conv(width, (3, 3), use_bias=not self.batch_norm, dtype=self.dtype)(x)
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x)
      x = nn.relu(x)
      if (i + 1) % self.pool_every == 0:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.dense, dtype=self.dtype)(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x), {"pre_logits": x}
