"""Losses per example or per token: `loss(logits, labels) -> logits.shape[:-1]`.

Labels are integer ids (class ids, token ids: no one-hot over a large vocabulary) or,
for the classification losses, one-hot, multi-hot or soft targets of the logits' shape.
"""

import inspect

import jax
import jax.numpy as jnp
import optax

from jaxtrain import config as config_lib
from jaxtrain.registry import Registry

LOSSES = Registry("loss")


def _is_ids(labels):
  return jnp.issubdtype(labels.dtype, jnp.integer)


@LOSSES.register("softmax_xent")
def softmax_xent(logits, labels, *, label_smoothing=0.0):
  if _is_ids(labels):
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if not label_smoothing:
      return nll
    # smooth_labels of the one-hot, without building it: (1-a)·nll + a·mean(-log p).
    uniform = -jax.nn.log_softmax(logits).mean(-1)
    return (1 - label_smoothing) * nll + label_smoothing * uniform
  if label_smoothing:
    labels = optax.smooth_labels(labels, label_smoothing)
  return optax.softmax_cross_entropy(logits, labels)


@LOSSES.register("sigmoid_xent")
def sigmoid_xent(logits, labels, *, label_smoothing=0.0):
  """Independent binary cross-entropies, summed over classes."""
  if _is_ids(labels):
    labels = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    labels = labels * (1 - label_smoothing) + label_smoothing / 2
  return optax.sigmoid_binary_cross_entropy(logits, labels).sum(-1)


def build(loss_config, default=config_lib.REQUIRED):
  """`loss.name` and its keyword arguments (e.g. `loss.label_smoothing`) -> loss function."""
  name = loss_config.get("name", default, kind=str)
  fn = LOSSES.get(name)
  kwargs = loss_config.take("name")
  defaults = {p.name: p.default for p in inspect.signature(fn).parameters.values()
              if p.name not in ("logits", "labels")}
  config_lib.check_kwargs(loss_config, kwargs, {**defaults, "name": None}, f"loss '{name}'")
  return lambda logits, labels: fn(logits, labels, **kwargs)
