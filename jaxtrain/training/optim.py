"""Optax optimizers and learning-rate schedules from the config.

    optimizer: name (sgd | adam | adamw), lr, weight_decay, grad_clip_norm, and the named
               optimizer's own arguments (momentum, nesterov; b1, b2, eps)
    schedule:  name (constant | cosine | linear | rsqrt | step), warmup_{steps,epochs,...},
               end_factor (cosine, linear), timescale (rsqrt), decay_factor and
               decay_every_{steps,epochs,...} (step)

The update is clip -> optimizer's scaling -> decoupled weight decay -> learning rate, so
weight decay follows the schedule but not the optimizer's statistics (AdamW's form, for
SGD too). Weight decay skips 0- and 1-D params: biases and normalisation scales.

Parameter groups, by regexes over names like 'params/Dense_0/kernel' (jaxtrain.paths:
`re.search`, the first matching rule wins, a rule that matches nothing is an error):

    optimizer.freeze   = ('regex', ...)           # no gradient, no optimizer state, unchanged
    optimizer.lr_mults = (('regex', mult), ...)   # lr of the group: schedule(step) * mult
    optimizer.wd_mults = (('regex', mult), ...)   # its decay: weight_decay * mult

Unmatched parameters get 1.0; a wd_mults rule decides for what it matches whatever its
rank (so ('bias', 1.0) decays biases), unmatched 0- and 1-D params keep no decay. The group's
learning rate scales its decay too (PyTorch's param groups; big_vision's does not). An
lr_mult of 0 stops a group moving but still computes its gradient and keeps its optimizer
state: `freeze` is what saves memory and time.
"""

import dataclasses
import inspect
import math
import numbers
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import optax

from jaxtrain import config as config_lib
from jaxtrain.errors import UserError, did_you_mean
from jaxtrain import paths

def _sgd(momentum=0.0, nesterov=False):
  if nesterov and not momentum:
    raise UserError("optimizer.nesterov=True needs optimizer.momentum > 0")
  return optax.trace(decay=momentum, nesterov=nesterov) if momentum else optax.identity()


_SCALERS = {
    "sgd": _sgd,
    "adam": lambda b1=0.9, b2=0.999, eps=1e-8: optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
}
_SCALERS["adamw"] = _SCALERS["adam"]


def decay_mask(params):
  return jax.tree.map(lambda p: p.ndim > 1, params)


GROUP_KEYS = ("freeze", "lr_mults", "wd_mults")


@dataclasses.dataclass(frozen=True)
class Groups:
  """What optimizer.freeze, .lr_mults and .wd_mults make of the parameters, by name."""
  frozen: dict            # name -> bool
  lr_mults: dict          # name -> float
  wd_mults: dict          # name -> float, or None: the default (1.0 for 2-D and up, else 0.0)
  ranks: dict             # name -> ndim
  trainable: Any          # A tree of bools like the params, or None when nothing is frozen.

  def mask(self, fn):
    """fn(name) for each array of a params tree (optax calls masks with the tree it has:
    inside multi_transform the frozen arrays are already gone, so go by name, not position)."""
    return lambda tree: jax.tree_util.tree_map_with_path(lambda path, _: fn(_NAME_PREFIX + paths.name_of(path)), tree)

  def decay(self, name):
    """The multiplier of optimizer.weight_decay for parameter `name`."""
    mult = self.wd_mults[name]
    return mult if mult is not None else float(self.ranks[name] > 1)


_NAME_PREFIX = "params/"  # As in the train state, so parallel.rules' patterns work here too.


def param_groups(optimizer, params, trainable_only=None):
  """Reads optimizer.freeze, .lr_mults and .wd_mults against `params` (shapes are enough:
  jax.eval_shape of the init), and logs the trainable and frozen parameter counts.
  `trainable_only(name)`: False freezes the param too (config.lora: all but the adapters)."""
  what = " of the parameters"
  freeze = _patterns(optimizer, "freeze")
  frozen_of = paths.match(params, freeze, optimizer.path("freeze"), what, prefix=_NAME_PREFIX)
  lr_rules = _rules(optimizer, "lr_mults")
  lr_of = paths.match(params, [p for p, _ in lr_rules], optimizer.path("lr_mults"), what, prefix=_NAME_PREFIX)
  wd_rules = _rules(optimizer, "wd_mults")
  wd_of = paths.match(params, [p for p, _ in wd_rules], optimizer.path("wd_mults"), what, prefix=_NAME_PREFIX)
  named = paths.named_leaves(params, _NAME_PREFIX)
  by_name = lambda indices, fn: {name: fn(i) for (name, _), i in zip(named, jax.tree.leaves(indices))}
  frozen = by_name(frozen_of, lambda i: i >= 0)
  if trainable_only is not None:
    frozen = {name: is_frozen or not trainable_only(name) for name, is_frozen in frozen.items()}
  sizes = {name: math.prod(leaf.shape) for name, leaf in named}
  num_frozen = sum(sizes[name] for name in sizes if frozen[name])
  if named and num_frozen == sum(sizes.values()):
    raise UserError(f"{optimizer.path('freeze')} freezes every parameter, so nothing would train; "
                    f"freeze fewer (paths look like {named[0][0]!r})")
  total = sum(sizes.values())
  logging.info("Parameters: %s (%s trainable, %s frozen by %s)", f"{total:,}", f"{total - num_frozen:,}",
               f"{num_frozen:,}", optimizer.path("freeze") + (" and lora" if trainable_only else ""))
  return Groups(frozen=frozen,
                lr_mults=by_name(lr_of, lambda i: float(lr_rules[i][1]) if i >= 0 else 1.0),
                wd_mults=by_name(wd_of, lambda i: float(wd_rules[i][1]) if i >= 0 else None),
                ranks={name: len(leaf.shape) for name, leaf in named},
                trainable=jax.tree_util.tree_map_with_path(
                    lambda path, _: not frozen[_NAME_PREFIX + paths.name_of(path)], params) if num_frozen else None)


def _patterns(optimizer, key):
  patterns = optimizer.get(key, ())
  if not (isinstance(patterns, (tuple, list)) and all(isinstance(p, str) for p in patterns)):
    raise UserError(f"config key '{optimizer.path(key)}' must be a tuple of regexes like ('Dense_0/',), "
                    f"got {patterns!r}")
  return list(patterns)


def _rules(optimizer, key):
  """((regex, multiplier >= 0), ...)."""
  rules = optimizer.get(key, ())
  if not isinstance(rules, (tuple, list)):
    rules = [rules]
  for i, rule in enumerate(rules):
    if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)
            and isinstance(rule[1], numbers.Real) and not isinstance(rule[1], bool) and rule[1] >= 0):
      raise UserError(f"{optimizer.path(key)}[{i}] must be (regex, multiplier) with a multiplier >= 0 "
                      f"like ('head/', 0.1), got {rule!r}")
  return list(rules)


def build(optimizer, schedule, *, total_steps, steps_per_epoch, batch_size, groups=None):
  """Returns (optax transformation, schedule function of the step). `groups`: what
  `param_groups` read (needed when optimizer.freeze, .lr_mults or .wd_mults is set)."""
  if groups is None and any(key in optimizer for key in GROUP_KEYS):
    raise ValueError("optim.build needs groups=optim.param_groups(optimizer, params) for "
                     "optimizer.freeze, .lr_mults or .wd_mults")
  lr = optimizer.get("lr", config_lib.REQUIRED, kind=float, minimum=0)
  lr_fn = build_schedule(schedule, lr, total_steps=total_steps,
                         steps_per_epoch=steps_per_epoch, batch_size=batch_size)
  name = optimizer.name
  if name not in _SCALERS:
    raise UserError(f"unknown optimizer '{name}'{did_you_mean(name, _SCALERS)}; known: {', '.join(_SCALERS)}")
  weight_decay = optimizer.get("weight_decay", 0.0, minimum=0)
  if weight_decay and name == "adam":
    raise UserError("optimizer 'adam' has no weight decay; use optimizer.name='adamw' for decoupled weight decay")
  clip = optimizer.get("grad_clip_norm", kind=float)
  if clip is not None and not clip > 0:
    raise UserError(f"config key '{optimizer.path('grad_clip_norm')}' must be positive, got {clip!r}")
  scaler = _SCALERS[name]
  if groups is not None and not weight_decay and any(m is not None for m in groups.wd_mults.values()):
    raise UserError(f"{optimizer.path('wd_mults')} multiplies optimizer.weight_decay, which is 0; "
                    f"set optimizer.weight_decay (and optimizer.name='adamw' for Adam)")
  read_here = ("name", "lr", "weight_decay", "grad_clip_norm") + GROUP_KEYS
  kwargs = optimizer.take(*read_here)
  defaults = {p.name: p.default for p in inspect.signature(scaler).parameters.values()}
  config_lib.check_kwargs(optimizer, kwargs, {**defaults, **dict.fromkeys(read_here)}, f"optimizer '{name}'")
  parts = [optax.clip_by_global_norm(clip)] if clip else []
  parts.append(scaler(**kwargs))
  if weight_decay and groups is None:
    parts.append(optax.add_decayed_weights(weight_decay, mask=decay_mask))
  elif weight_decay:
    # One masked decay per distinct coefficient: without wd_mults that is exactly the line
    # above, so the optimizer state (and old checkpoints) keep their structure.
    for mult in sorted({groups.decay(n) for n in groups.ranks} - {0.0}, reverse=True):
      parts.append(optax.add_decayed_weights(weight_decay * mult, mask=groups.mask(lambda n, m=mult: groups.decay(n) == m)))
  for mult in sorted(set(groups.lr_mults.values()) - {1.0} if groups else ()):
    parts.append(optax.masked(optax.scale(mult), groups.mask(lambda n, m=mult: groups.lr_mults[n] == m)))
  parts.append(optax.scale_by_learning_rate(lr_fn))
  tx = optax.chain(*parts)
  if groups is not None and groups.trainable is not None:
    # Frozen arrays: zero updates and no state (set_to_zero keeps none); the train step
    # does not even compute their gradients (step.make_train_step's `trainable`).
    labels = groups.mask(lambda n: "frozen" if groups.frozen[n] else "train")
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  return tx, lr_fn


def build_schedule(schedule, lr, *, total_steps, steps_per_epoch, batch_size):
  """Linear warmup from 0 to `lr`, then the named decay over the remaining steps."""
  durations = dict(steps_per_epoch=steps_per_epoch, batch_size=batch_size)
  name = schedule.get("name", "constant")
  warmup = config_lib.steps(schedule, "warmup", default=0, allow_zero=True, **durations)
  if warmup >= total_steps:
    raise UserError(f"the warmup ({warmup} steps) must be shorter than training ({total_steps} steps)")
  decay_steps = total_steps - warmup
  if name == "constant":
    main = optax.constant_schedule(lr)
  elif name == "cosine":
    main = optax.cosine_decay_schedule(lr, decay_steps, alpha=schedule.get("end_factor", 0.0))
  elif name == "linear":
    main = optax.linear_schedule(lr, lr * schedule.get("end_factor", 0.0), decay_steps)
  elif name == "rsqrt":
    timescale = schedule.get("timescale", float(max(warmup, 1)))
    if not timescale > 0:
      raise UserError(f"schedule.timescale must be positive, got {timescale!r}")
    main = lambda step: lr * jax.lax.rsqrt(1.0 + step / timescale)
  elif name == "step":
    every = config_lib.steps(schedule, "decay_every", **durations)
    factor = schedule.get("decay_factor", 0.1)
    main = lambda step: lr * factor ** jnp.floor_divide(step, every)
  else:
    known = ("constant", "cosine", "linear", "rsqrt", "step")
    raise UserError(f"unknown schedule '{name}'{did_you_mean(name, known)}; known: {', '.join(known)}")
  if not warmup:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
