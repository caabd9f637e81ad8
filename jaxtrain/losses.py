"""Per-example losses: `loss(logits, labels) -> [batch]`, labels one-hot (or multi-hot)."""

import inspect

import optax

from jaxtrain import config as config_lib
from jaxtrain.registry import Registry

LOSSES = Registry("loss")


@LOSSES.register("softmax_xent")
def softmax_xent(logits, labels, *, label_smoothing=0.0):
  if label_smoothing:
    labels = optax.smooth_labels(labels, label_smoothing)
  return optax.softmax_cross_entropy(logits, labels)


@LOSSES.register("sigmoid_xent")
def sigmoid_xent(logits, labels, *, label_smoothing=0.0):
  """Independent binary cross-entropies, summed over classes."""
  if label_smoothing:
    labels = labels * (1 - label_smoothing) + label_smoothing / 2
  return optax.sigmoid_binary_cross_entropy(logits, labels).sum(-1)


def build(loss_config):
  """`loss.name` and its keyword arguments (e.g. `loss.label_smoothing`) -> loss function."""
  fn = LOSSES.get(loss_config.name)
  kwargs = loss_config.take("name")
  defaults = {p.name: p.default for p in inspect.signature(fn).parameters.values()
              if p.name not in ("logits", "labels")}
  config_lib.check_kwargs(loss_config, kwargs, {**defaults, "name": None}, f"loss '{loss_config.name}'")
  return lambda logits, labels: fn(logits, labels, **kwargs)
