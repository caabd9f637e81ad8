"""A multi-layer perceptron on flattened inputs."""

from typing import Sequence

import flax.linen as nn

from jaxtrain.models import MODELS


@MODELS.register("mlp")
class MLP(nn.Module):
  num_classes: int
  hidden: Sequence[int] = (256, 256)
  dropout: float = 0.0
  dtype: str = "float32"  # Of the computation; params stay float32 ('bfloat16': mixed precision).

  @nn.compact
  def __call__(self, x, *, train):
    x = x.reshape((x.shape[0], -1)).astype(self.dtype)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x), {"pre_logits": x}
