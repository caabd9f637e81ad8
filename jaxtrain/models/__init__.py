"""Flax Linen models and their registry.

A model's `__call__(x, *, train)` returns `(logits, out)`, where `out['pre_logits']` is
the representation before the classifier head (few-shot evaluators probe it).
"""

import dataclasses

from jaxtrain.errors import UserError, did_you_mean
from jaxtrain.registry import Registry

MODELS = Registry("model")

# Importing the modules registers their models.
from jaxtrain.models import cnn, mlp  # pylint: disable=wrong-import-position,unused-import


def build(model_config):
  """The model named by `model.name`, built with the section's other keys as arguments."""
  cls = MODELS.get(model_config.name)
  kwargs = model_config.take("name")
  fields = {f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name")}
  for key in kwargs:
    if key not in fields:
      raise UserError(f"unknown config key '{model_config.path(key)}': model '{model_config.name}' "
                      f"has no argument '{key}'{did_you_mean(key, fields)}")
  return cls(**kwargs)
