"""Preprocessing ops composed from a config string, applied to whole batches.

A pipeline is written as ops joined by '|', each a call with literal arguments:

    "value_range(-1, 1)|onehot(10, key='label', key_result='labels')|keep('image', 'labels')"

Each registered op is a factory returning a function of a batch (a dict of numpy arrays
with a leading batch axis), vectorised over it. Ops registered with `random=True` take a
second argument, a `BatchRng`, which draws per-example randomness for the whole global
batch and hands this process its slice: augmentation is reproducible and does not depend
on the number of processes.
"""

import ast
import dataclasses

import numpy as np

from jaxtrain.errors import UserError
from jaxtrain.registry import Registry

OPS = Registry("preprocessing op")


class BatchRng:
  """Per-example random draws for examples [start, start+size) of a global batch."""

  def __init__(self, seed, global_size, start, size):
    self._rng = np.random.default_rng(seed)
    self._global_size, self._slice = global_size, slice(start, start + size)

  def integers(self, low, high, shape=()):
    return self._rng.integers(low, high, (self._global_size, *shape))[self._slice]

  def uniform(self, shape=()):
    return self._rng.random((self._global_size, *shape))[self._slice]


@dataclasses.dataclass(frozen=True)
class Op:
  fn: callable
  random: bool = False
  text: str = ""  # As written in the config, for error messages.


def register(name, random=False):
  def decorator(factory):
    def make(*args, **kwargs):
      return Op(factory(*args, **kwargs), random)
    make.__doc__ = factory.__doc__
    return OPS.register(name)(make)
  return decorator


def parse(spec, where="input.pp"):
  """Turns the pipeline string at config key `where` into `(batch, rng: BatchRng) -> batch`."""
  if not isinstance(spec, str):
    raise UserError(f"config key '{where}' must be a string of ops joined by '|', got {spec!r}")
  ops = [_parse_call(part.strip(), spec) for part in spec.split("|") if part.strip()]

  def preprocess(batch, rng):
    batch = dict(batch)
    for op in ops:
      try:
        batch = op.fn(batch, rng) if op.random else op.fn(batch)
      except Exception as e:  # pylint: disable=broad-except  (name the op, whatever went wrong)
        raise UserError(f"{where}: op '{op.text}' failed on a batch with keys {', '.join(sorted(batch))}: "
                        f"{type(e).__name__}: {e}") from e
    return batch

  return preprocess


def _parse_call(text, spec):
  # The name may be 'module.path:attr', which is not Python, so only the arguments are.
  name, paren, rest = text.partition("(")
  name = name.strip()
  try:
    if not name or (paren and not rest.rstrip().endswith(")")):
      raise ValueError("not a call")
    node = ast.parse(f"f({rest}" if paren else "f()", mode="eval").body
    args = [ast.literal_eval(a) for a in node.args]
    kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
  except (SyntaxError, ValueError):
    raise UserError(f"cannot parse preprocessing op '{text}' in '{spec}': write name(arg, key=value) "
                    f"with literal arguments") from None
  factory = OPS.get(name)
  try:
    made = factory(*args, **kwargs)
  except Exception as e:  # pylint: disable=broad-except  (any bad argument is the user's to fix)
    raise UserError(f"bad arguments to preprocessing op '{text}': {e}") from None
  # A 'module.path:attr' factory may return a plain function of the batch.
  return dataclasses.replace(made if isinstance(made, Op) else Op(made), text=text)


# ---------------------------------------------------------------------------------------
# The ops.
# ---------------------------------------------------------------------------------------


@register("value_range")
def value_range(vmin, vmax, in_min=0.0, in_max=255.0, key="image"):
  """Maps `key` linearly from [in_min, in_max] to [vmin, vmax], as float32."""
  scale = (vmax - vmin) / (in_max - in_min)

  def fn(batch):
    batch[key] = (np.asarray(batch[key], np.float32) - in_min) * scale + vmin
    return batch
  return fn


@register("onehot")
def onehot(depth, key="label", key_result=None, on=1.0, off=0.0):
  """One-hot encodes the integer `key` into `key_result` (default: in place)."""
  eye = np.where(np.eye(depth, dtype=bool), on, off).astype(np.float32)

  def fn(batch):
    label = np.asarray(batch[key])
    if label.size and (label.min() < 0 or label.max() >= depth):
      raise ValueError(f"a label of '{key}' is outside onehot({depth}): {label.min()}..{label.max()}")
    batch[key_result or key] = eye[label]
    return batch
  return fn


@register("keep")
def keep(*keys):
  """Keeps only `keys` (batches must hold arrays only, and only what the model needs)."""
  def fn(batch):
    missing = [k for k in keys if k not in batch]
    if missing:
      raise KeyError(f"keep{keys}: the batch has no {missing}; it has {sorted(batch)}")
    return {k: batch[k] for k in keys}
  return fn


@register("rename")
def rename(**new_from_old):
  """rename(labels='label') renames `label` to `labels`."""
  def fn(batch):
    for new, old in new_from_old.items():
      batch[new] = batch.pop(old)
    return batch
  return fn


@register("random_shift", random=True)
def random_shift(max_shift=1, key="image"):
  """Translates each image by up to `max_shift` pixels each way, filling with zeros."""
  def fn(batch, rng):
    images = np.asarray(batch[key])  # [B, H, W, ...]
    b, h, w = images.shape[:3]
    pad = [(0, 0), (max_shift, max_shift), (max_shift, max_shift)] + [(0, 0)] * (images.ndim - 3)
    padded = np.pad(images, pad)
    dy, dx = rng.integers(0, 2 * max_shift + 1, (2,)).T
    rows = (dy[:, None] + np.arange(h))[:, :, None]
    cols = (dx[:, None] + np.arange(w))[:, None, :]
    batch[key] = padded[np.arange(b)[:, None, None], rows, cols]
    return batch
  return fn


@register("random_flip_lr", random=True)
def random_flip_lr(key="image"):
  """Flips each image left-right with probability 1/2."""
  def fn(batch, rng):
    images = np.asarray(batch[key])
    flip = (rng.uniform() < 0.5).reshape((-1,) + (1,) * (images.ndim - 1))
    batch[key] = np.where(flip, images[:, :, ::-1], images)
    return batch
  return fn
