"""`--mode=lr_find`: Smith's learning-rate range test, as Lightning's `lr_find` and fastai's.

    python -m jaxtrain.launch --config=experiments/digits.py --workdir=runs/digits \\
        --mode=lr_find [--lr_find_out=lr_find.png --lr_find_min=1e-7 --lr_find_max=10 --lr_find_steps=100]

From the state a fresh run of the config starts from (its init_from applied, if any), it
trains up to `steps` steps on the training data with the learning rate ramped
exponentially, lr_k = lr_min * (lr_max / lr_min) ** (k / (steps - 1)), and everything else
as the config trains: optimizer, parameter groups (lr_mults scale the ramp), LoRA, weight
decay, clipping, accumulation, the mesh. The ramp is the config's own `step` schedule,
decaying by a factor above 1 every step: the train step is built and compiled as training
builds it.

It stops once the smoothed loss (a debiased exponential moving average, beta 0.98) is more
than 4 times its best, or the loss is not finite (Lightning's rule), prints a table and
two rates: the suggested one, where the smoothed loss falls fastest (Lightning's default),
and a tenth of the rate of the lowest smoothed loss (fastai's rule of thumb). The plot
goes to `out` (matplotlib: pip install -e '.[plots]'; without it the curve goes to the
.json beside `out`). Nothing under the work directory is created, read for a resume, or
changed: `out` may not lie inside it.
"""

import copy
import dataclasses
import json
import math
import os

import jax
import ml_collections
import numpy as np

from jaxtrain import config as config_lib
from jaxtrain.errors import UserError
from jaxtrain.rundir import storage
from jaxtrain.training import build as build_lib

BETA = 0.98             # Smoothing of the loss (fastai, Lightning).
DIVERGENCE = 4.0        # Stop once the smoothed loss exceeds this times its best (Lightning).
SKIP_BEGIN, SKIP_END = 10, 1  # Points left out of the steepest-descent search (Lightning).
MIN_STEPS = 10
FORMATS = ("png", "pdf", "svg")


@dataclasses.dataclass
class Result:
  """The curve (one entry per step run) and what was read from it."""
  lrs: list
  losses: list            # As the step computed them; the last may be inf or nan.
  smoothed: list
  stop: str               # Why the ramp ended, in words.
  suggested: float | None  # Steepest descent of the smoothed loss.
  min_over_10: float | None  # A tenth of the lr of the lowest smoothed loss.
  written: str | None     # The plot, or the .json without matplotlib.


def run(config, workdir, *, out="lr_find.png", lr_min=1e-7, lr_max=10.0, steps=100):
  """Runs the range test for `config`; `workdir` is only checked against `out`, never touched."""
  fmt = _check_arguments(workdir, out, lr_min, lr_max, steps)
  exp = build_lib.build(ramp_config(config, lr_min, lr_max, steps), workdir=None)  # None: init_from never resumes.
  main = jax.process_index() == 0
  if main:
    fresh = "fresh parameters" + (" with init_from" if exp.init_from else "")
    print(f"lr_find: up to {steps} steps from {fresh}, lr {lr_min:.1e} -> {lr_max:.1e} "
          f"(x{_factor(lr_min, lr_max, steps):.4g} per step), batch {exp.data.batch_size}", flush=True)
  result = ramp(exp, steps)
  result.suggested, result.min_over_10 = suggest(result.lrs, result.smoothed)
  if main:
    _report(result, config)
    result.written = _write(result, out, fmt)
  return result


def ramp_config(config, lr_min, lr_max, steps):
  """A copy of `config` that trains `steps` steps at lr_min * factor**step, untraced."""
  config = copy.deepcopy(config)
  with config.unlocked():
    for unit in config_lib.UNITS:
      if f"total_{unit}" in config:
        config[f"total_{unit}"] = None
    config.total_steps = steps
    if "optimizer" in config:  # Else build says what is missing.
      config.optimizer.lr = lr_min
    # 'step' multiplies lr by decay_factor every decay_every steps: a factor above 1 is the ramp.
    config.schedule = ml_collections.ConfigDict(
        dict(name="step", decay_every_steps=1, decay_factor=_factor(lr_min, lr_max, steps)))
    if "profile" in config and config.profile.get("start_step") is not None:
      config.profile.start_step = None  # A trace window of the full run may lie past the ramp.
  return config


def ramp(exp, steps):
  """Trains `exp` (built by `ramp_config`) until the loss diverges or `steps` are done."""
  strategy = exp.strategy
  state, batches = exp.fresh_state(), exp.batches()
  lrs, losses, smoothed = [], [], []
  average = best = 0.0
  stop = (f"reached --lr_find_max after {steps} steps without the loss diverging "
          f"(raise --lr_find_max to see where it does)")
  for k in range(steps):
    state, metrics = exp.train_step(state, strategy.shard(next(batches)))
    metrics = jax.device_get(metrics)  # Each step decides whether to go on: wait for it.
    lr, loss = float(metrics["lr"]), float(metrics["loss"])
    skipped = bool(metrics.get("skipped"))  # skip_nonfinite: its loss is reported as 0.
    lrs.append(lr)
    losses.append(math.nan if skipped else loss)
    if skipped or not math.isfinite(loss):
      smoothed.append(math.nan)
      stop = (f"step {k + 1} (lr {lr:.2e}) was skipped: its loss, gradients or new parameters were not finite"
              if skipped else f"the loss is {loss} at step {k + 1} (lr {lr:.2e})")
      break
    average = BETA * average + (1 - BETA) * loss
    smoothed.append(average / (1 - BETA ** (k + 1)))
    best = smoothed[-1] if k == 0 else min(best, smoothed[-1])
    if smoothed[-1] > DIVERGENCE * best:
      stop = (f"the smoothed loss {smoothed[-1]:.4g} at step {k + 1} (lr {lr:.2e}) is more than "
              f"{DIVERGENCE:g}x its best, {best:.4g}")
      break
  return Result(lrs=lrs, losses=losses, smoothed=smoothed, stop=stop, suggested=None, min_over_10=None,
                written=None)


def suggest(lrs, smoothed):
  """(steepest descent, lowest / 10): the lr where the smoothed loss falls fastest per step
  (per log-lr: the ramp is exponential), leaving out the first and last points as Lightning
  does, and only up to the lowest point: past it, a fall is the recovery from a spike
  (measured: 6.0 on a small CNN whose loss bounced on the way up); and a tenth of the lr of
  the lowest smoothed loss. (None, None) where the smoothed loss never fell."""
  finite = [i for i, value in enumerate(smoothed) if math.isfinite(value)]
  if len(finite) < 3:
    return None, None
  n = finite[-1] + 1  # Finite up to the stop: a non-finite loss ends the ramp.
  lowest = int(np.argmin(np.asarray(smoothed[:n])))
  begin = min(SKIP_BEGIN, n // 4)
  end = min(lowest + 1, n - SKIP_END)
  if end - begin < 2:
    begin = 0  # The lowest point comes early: search all of the descent.
  if end - begin < 2:
    return None, None
  steepest = begin + int(np.argmin(np.gradient(np.asarray(smoothed[begin:end]))))
  return lrs[steepest], lrs[lowest] / 10


def _factor(lr_min, lr_max, steps):
  return (lr_max / lr_min) ** (1 / (steps - 1))


def _check_arguments(workdir, out, lr_min, lr_max, steps):
  """Every mistake in the arguments, before anything is built or written. Returns out's format."""
  if not (lr_min > 0 and lr_max > lr_min and math.isfinite(lr_max)):
    raise UserError(f"--lr_find_min={lr_min:g} and --lr_find_max={lr_max:g} must satisfy 0 < min < max")
  if steps < MIN_STEPS:
    raise UserError(f"--lr_find_steps={steps} is too short for a range test; use at least {MIN_STEPS} (default 100)")
  if not out:
    raise UserError("--lr_find_out is empty; name the plot's file, e.g. --lr_find_out=lr_find.png")
  if workdir:
    inside, here = os.path.realpath(workdir), os.path.realpath(out)
    if os.path.commonpath([inside, here]) == inside:
      raise UserError(f"--lr_find_out={out} lies inside --workdir={workdir}, which lr_find leaves byte-identical; "
                      f"write the plot elsewhere, e.g. --lr_find_out=lr_find.png in another directory")
  if os.path.isdir(out):
    raise UserError(f"--lr_find_out={out} is a directory; name a file in it, e.g. {os.path.join(out, 'lr_find.png')}")
  fmt = os.path.splitext(out)[1].lower().lstrip(".")
  if fmt not in FORMATS:
    raise UserError(f"--lr_find_out={out} must end in .{', .'.join(FORMATS)}")
  parent = os.path.dirname(os.path.abspath(out))
  while not os.path.exists(parent):  # Created at the end: the nearest existing ancestor must allow it.
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or storage.writable_problem(parent):
    raise UserError(f"--lr_find_out={out}: {parent} is not a writable directory; pick another path")
  return fmt


def _report(result, config):
  """The table, the stop and the two rates, on stdout."""
  n = len(result.lrs)
  rows = sorted(set(np.linspace(0, n - 1, min(n, 9)).round().astype(int).tolist()))
  print(f"{'step':>6} {'lr':>9} {'loss':>10} {'smoothed':>10}")
  for i in rows:
    print(f"{i + 1:>6} {result.lrs[i]:>9.2e} {result.losses[i]:>10.4g} {result.smoothed[i]:>10.4g}")
  print(f"Stopped: {result.stop}.")
  if result.suggested is None:
    print(f"No suggestion: the smoothed loss did not fall before the stop at step {n}; widen the range "
          f"(--lr_find_min, --lr_find_max) or raise --lr_find_steps", flush=True)
    return
  configured = config.get("optimizer", {}).get("lr")
  print(f"Lowest smoothed loss / 10: {result.min_over_10:.1e} (fastai's rule of thumb)"
        + (f"; the config has optimizer.lr={configured:g}" if configured is not None else ""))
  print(f"Suggested learning rate: {result.suggested:.1e} (steepest descent of the smoothed loss); "
        f"set --config.optimizer.lr={result.suggested:.1e}", flush=True)


def _write(result, out, fmt):
  """The plot at `out`, or without matplotlib the curve as JSON beside it; written whole, then renamed."""
  try:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    try:
      import matplotlib.figure  # pylint: disable=import-outside-toplevel  (optional)
    except ImportError:
      path = os.path.splitext(out)[0] + ".json"
      curve = dict(lr=result.lrs, loss=result.losses, smoothed_loss=result.smoothed, stop=result.stop,
                   suggested_lr=result.suggested, min_loss_lr_over_10=result.min_over_10)
      _replace(path, lambda tmp: _dump(curve, tmp))
      print(f"Plot skipped: matplotlib is not installed (pip install -e '.[plots]'); the curve is in {path}")
      return path
    _replace(out, lambda tmp: _figure(matplotlib.figure.Figure, result).savefig(tmp, format=fmt))
  except OSError as e:
    raise UserError(f"cannot write --lr_find_out={out}: {e.strerror or e}; pick a writable path") from None
  print(f"Plot: {out}")
  return out


def _replace(path, write):
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _dump(curve, path):
  with open(path, "w", encoding="utf-8") as f:
    json.dump(curve, f, indent=1)  # A diverged loss as NaN / Infinity: Python's json reads them back.
    f.write("\n")


def _figure(Figure, result):  # pylint: disable=invalid-name
  """Loss against lr (log x): raw faint, smoothed solid, the two rates marked."""
  fig = Figure(figsize=(6, 4), dpi=100)  # Not pyplot: no global state, no display needed.
  ax = fig.subplots()
  lrs, smoothed = np.asarray(result.lrs), np.asarray(result.smoothed)
  ax.plot(lrs, result.losses, color="tab:blue", alpha=0.25, linewidth=1, label="loss")
  ax.plot(lrs, smoothed, color="tab:blue", linewidth=2, label=f"smoothed (EMA, beta {BETA})")
  if result.suggested is not None:
    i = result.lrs.index(result.suggested)
    ax.plot([result.suggested], [smoothed[i]], "o", color="tab:red", markersize=8,
            label=f"suggested {result.suggested:.1e} (steepest descent)")
    ax.axvline(result.min_over_10, color="tab:gray", linestyle="--", linewidth=1,
               label=f"lowest / 10: {result.min_over_10:.1e}")
  finite = smoothed[np.isfinite(smoothed)]
  raw = np.asarray(result.losses)[np.isfinite(result.losses)]
  if finite.size:  # The explosion would squash the curve: show up to the divergence threshold.
    low, high = min(finite.min(), raw.min()), max(finite[0], DIVERGENCE * finite.min())
    if high > low:
      ax.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))
  ax.set_xscale("log")
  ax.set_xlabel("learning rate")
  ax.set_ylabel("training loss")
  ax.set_title("Learning-rate range test")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  return fig
