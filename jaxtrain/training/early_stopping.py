"""Early stopping: `config.early_stopping`, counted in evaluations of one metric.

    config.early_stopping = dict(metric='val/loss', mode='min', patience=3, min_delta=0.001)

`metric` is '<evaluator>/<metric>' as in metrics.jsonl, of an evaluator that runs
periodically. An evaluation improves on the best so far when it beats it by more than
`min_delta` (lower for mode 'min', higher for 'max'); the first evaluation always does.
After `patience` evaluations in a row without an improvement the run stops at that step.

The best state is kept whatever the checkpoint interval: a step that improves is saved
(an extra save where no checkpoint was due) and pinned against `checkpoint.keep`'s clean-up
until a better one is saved, so no interval has to line up. The stop step is saved too.
The counting state travels in each checkpoint's metadata, so a resumed run stops at the
same step as one never interrupted, and running the same command after the stop trains
no further. Every process sees the same evaluation results, so all decide alike.
"""

import dataclasses
import math

from absl import logging

from jaxtrain import config as config_lib
from jaxtrain.errors import UserError, did_you_mean


@dataclasses.dataclass(frozen=True)
class Rule:
  """The settings of `config.early_stopping`."""
  metric: str
  mode: str
  patience: int
  min_delta: float


def build(section, evaluators):
  """The Rule of `config.early_stopping` (a Reader section), or None where it is unset.
  Fails with one line on a metric no periodic evaluator reports, a bad mode or patience."""
  if not section.keys():
    return None
  metric = section.get("metric", config_lib.REQUIRED, kind=str)
  measured = {f"{s.name}/{name}": s for s in evaluators for name in getattr(s.evaluator, "metric_names", ())}
  if metric not in measured:
    have = f"the evaluators report {', '.join(sorted(measured))}" if measured else "config.evals has no evaluator"
    raise UserError(f"early_stopping.metric='{metric}' is not a metric of this run's evaluators"
                    f"{did_you_mean(metric, measured)}; {have}")
  scheduled = measured[metric]
  if scheduled.every_steps is None:
    raise UserError(f"early_stopping.metric='{metric}' is measured only at the end of training: there is nothing "
                    f"to stop; set evals.{scheduled.name}.every_steps (or _epochs, _examples)")
  mode = section.get("mode", config_lib.REQUIRED, kind=str)
  if mode not in ("min", "max"):
    raise UserError(f"early_stopping.mode must be 'min' or 'max' (is a lower or a higher {metric} better?), "
                    f"got {mode!r}")
  patience = section.get("patience", config_lib.REQUIRED, kind=int, minimum=1)
  min_delta = section.get("min_delta", 0.0, minimum=0.0)
  if not math.isfinite(min_delta):
    raise UserError(f"config key 'early_stopping.min_delta' must be a finite number, got {min_delta!r}")
  return Rule(metric=metric, mode=mode, patience=patience, min_delta=float(min_delta))


class Tracker:
  """Follows a Rule through one run: `after_evaluations` at each step, `state` for the
  checkpoint's metadata, `resume` from it. With no Rule it does nothing."""

  def __init__(self, rule, checkpointer):
    self.rule, self._ckpt = rule, checkpointer
    self.best = self.best_step = None
    self.bad_evals = 0  # Evaluations since the best that did not improve on it.

  @property
  def stopped(self):
    return self.rule is not None and self.bad_evals >= self.rule.patience

  def state(self):
    """JSON for the checkpoint's metadata (None without a Rule)."""
    if self.rule is None:
      return None
    return dict(metric=self.rule.metric, mode=self.rule.mode, best=self.best, best_step=self.best_step,
                bad_evals=self.bad_evals)

  def resume(self, saved, step):
    """Takes up the state a checkpoint of `step` saved. True if that run had stopped early
    (it logs so): there is nothing more to train.

    A changed patience or min_delta applies from here on (raising patience trains on);
    another metric or mode starts counting afresh."""
    if self.rule is None or not saved or (saved["metric"], saved["mode"]) != (self.rule.metric, self.rule.mode):
      return False
    self.best, self.best_step, self.bad_evals = saved["best"], saved["best_step"], saved["bad_evals"]
    if self.best_step is not None:
      self._ckpt.keep_also(self.best_step)
    if self.stopped:
      logging.info("Stopped early at step %d before (%s); nothing more to train: raise early_stopping.patience "
                   "to train on, or use a new --workdir.", step, self._why())
    return self.stopped

  def after_evaluations(self, step, written):
    """Counts this step's evaluation of the metric, if `written` (this step's rows) has it.
    True when this step must be saved: a new best (pinned as the one to keep), or the stop."""
    if self.rule is None or self.rule.metric not in written:
      return False
    value = float(written[self.rule.metric])
    if self._improves(value):
      self.best, self.best_step, self.bad_evals = value, step, 0
      self._ckpt.keep_also(step)
      return True
    self.bad_evals += 1
    if self.stopped:
      logging.info("Early stopping at step %d: %s.", step, self._why())
    return self.stopped

  def _improves(self, value):
    if not math.isfinite(value):
      return False
    if self.best is None:
      return True
    if self.rule.mode == "min":
      return value < self.best - self.rule.min_delta
    return value > self.best + self.rule.min_delta

  def _why(self):
    by = f" by {self.rule.min_delta:g}" if self.rule.min_delta else ""
    evaluations = f"{self.bad_evals} evaluation{'s' if self.bad_evals != 1 else ''}"
    if self.best_step is None:  # Not one finite value.
      return f"{self.rule.metric} has not had a finite value for {evaluations}"
    return (f"{self.rule.metric} has not improved{by} for {evaluations} (best {self.best:.4g} at step "
            f"{self.best_step}, kept in {self._ckpt.directory}/{self.best_step}; evaluate or load it with "
            f"--step={self.best_step})")
