"""Flax Linen models and their registry.

A model's `__call__(x, *, train)` returns `(logits, out)`, where `out['pre_logits']` is
the representation before the classifier head (few-shot evaluators probe it). A language
model whose class sets `splits_head = True` also takes `head=False`: it returns
`(None, out)` with `out['unembed']`, the head as a function of `pre_logits`; with
`task.logits='scored'` the train and evaluation steps then compute logits only where a
token is scored (step.py).
"""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from jaxtrain import config as config_lib
from jaxtrain.errors import UserError
from jaxtrain.registry import Registry

MODELS = Registry("model")

# Importing the modules registers their models.
from jaxtrain.models import cnn, gemma3, llama, mlp  # pylint: disable=wrong-import-position,unused-import


def build(model_config):
  """The model named by `model.name`, built with the section's other keys as arguments."""
  name = model_config.name
  cls = MODELS.get(name)
  if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
    raise UserError(f"model.name='{name}' is not a Flax Linen module class")
  kwargs = model_config.take("name")
  fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name")}
  defaults = {key: None if f.default is dataclasses.MISSING else f.default for key, f in fields.items()}
  config_lib.check_kwargs(model_config, kwargs, {**defaults, "name": None}, f"model '{name}'")
  if "dtype" in kwargs:
    _check_dtype(model_config.path("dtype"), kwargs["dtype"])
  for key, field in fields.items():
    no_default = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    if no_default and key not in kwargs:
      raise UserError(f"config key '{model_config.path(key)}' is required by model '{name}' but not set")
  return cls(**kwargs)


def _check_dtype(path, name):
  """The computation dtype must be a float JAX knows ('float32', 'bfloat16', 'float16')."""
  try:
    ok = jnp.issubdtype(jnp.dtype(name), jnp.floating)
  except TypeError:
    ok = False
  if not ok:
    raise UserError(f"config key '{path}' must name a float dtype such as 'float32' or 'bfloat16' "
                    f"(mixed precision), got {name!r}")
