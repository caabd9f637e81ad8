"""Optax optimizers and learning-rate schedules from the config.

    optimizer: name (sgd | adam | adamw), lr, weight_decay, grad_clip_norm, and the named
               optimizer's own arguments (momentum, nesterov; b1, b2, eps)
    schedule:  name (constant | cosine | linear | rsqrt | step), warmup_{steps,epochs,...},
               end_factor (cosine, linear), timescale (rsqrt), decay_factor and
               decay_every_{steps,epochs,...} (step)

The update is clip -> optimizer's scaling -> decoupled weight decay -> learning rate, so
weight decay follows the schedule but not the optimizer's statistics (AdamW's form, for
SGD too). Weight decay skips 0- and 1-D params: biases and normalisation scales.
"""

import inspect

import jax
import jax.numpy as jnp
import optax

from jaxtrain import config as config_lib
from jaxtrain.errors import UserError, did_you_mean

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


def build(optimizer, schedule, *, total_steps, steps_per_epoch, batch_size):
  """Returns (optax transformation, schedule function of the step)."""
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
  read_here = ("name", "lr", "weight_decay", "grad_clip_norm")
  kwargs = optimizer.take(*read_here)
  defaults = {p.name: p.default for p in inspect.signature(scaler).parameters.values()}
  config_lib.check_kwargs(optimizer, kwargs, {**defaults, **dict.fromkeys(read_here)}, f"optimizer '{name}'")
  parts = [optax.clip_by_global_norm(clip)] if clip else []
  parts.append(scaler(**kwargs))
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay, mask=decay_mask))
  parts.append(optax.scale_by_learning_rate(lr_fn))
  return optax.chain(*parts), lr_fn


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
