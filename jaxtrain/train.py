"""The training loop: config in, trained and evaluated model out, everything in `workdir`.

Read it top to bottom: build everything from the config and compile every step
(`training.build`: any mistake fails before the work directory is touched), start fresh
or resume, then loop. The loop never waits for the device except when it logs, saves or
evaluates: its steps run under `jax.transfer_guard("disallow")`, so a host transfer that
nobody meant (a `float()` of a device array, a numpy batch into the step) fails at once.
"""

import json
import os

from absl import logging
import jax
import numpy as np

from jaxtrain.checkpoints import checkpointer as checkpoint
from jaxtrain import config as config_lib
from jaxtrain.errors import UserError
from jaxtrain import evals
from jaxtrain.rundir import layout
from jaxtrain.rundir.lock import lock_for
from jaxtrain.rundir import metrics as metrics_lib
from jaxtrain.rundir.preemption import Preempted, PreemptionWatch
from jaxtrain.rundir import storage
from jaxtrain import step as step_lib
from jaxtrain.training.build import build
from jaxtrain.training import early_stopping
from jaxtrain.training import host_memory


class NonFiniteLoss(UserError):
  """The loss (or the gradients, or the parameters) became NaN or infinite at `step`;
  the train state of `first_bad_state` and later ones are not to be resumed from."""

  def __init__(self, message, step, first_bad_state=None):
    super().__init__(message)
    self.step = step
    self.first_bad_state = step - 1 if first_bad_state is None else first_bad_state


def run(config, workdir):
  """Trains as `config` says, in `workdir`; resumes from its newest checkpoint if any.

  Returns the metrics of the last log and evaluation, keyed '<prefix>/<name>'.
  """
  workdir = storage.one_spelling(workdir)
  if storage.is_gcs(workdir):
    storage.check_bucket(workdir)  # Read-only: a missing bucket or credentials, one line before the build.
  layout.saved_config(workdir)  # The config.json of a run to resume, damaged: one line before the build.
  exp = build(config, workdir)
  host_memory.give_back_freed()  # What compiling left free (host_memory.py).
  config = exp.config  # With init_from.model resolved: config.json names the architecture trained.
  strategy, total_steps, steps_per_epoch = exp.strategy, exp.total_steps, exp.data.steps_per_epoch

  # ---- Work directory: fresh start or resume ------------------------------------------
  _check_workdir(workdir)
  lock = lock_for(workdir).acquire() if jax.process_index() == 0 else None  # Process 0 writes the shared files.
  preemption = PreemptionWatch().start()
  ckpt = writer = None
  last = {}
  try:
    ckpt = checkpoint.Checkpointer(workdir, **exp.checkpointing)
    stopping = early_stopping.Tracker(exp.early_stopping, ckpt)
    train_iter = exp.batches()
    pending = []  # Per-step metrics since the last log: on the device until the next log.
    train_seconds = 0.0
    restored = ckpt.restore_newest(exp.abstract_state, train_iter)
    if restored:
      state, metadata = restored
      pending, train_seconds = metadata["pending"], metadata["train_seconds"]
      _check_same_data_order(metadata["config"], config, int(state.step), workdir)
      if int(state.step) > total_steps:
        raise UserError(f"the newest checkpoint in {workdir} is at step {int(state.step)}, past the "
                        f"{total_steps} steps this config trains for; raise the total or use a new --workdir")
      if stopping.resume(metadata.get("early_stopping"), int(state.step)):
        return metadata["metrics"]  # It stopped early: nothing to train, nothing written.
      logging.info("Resumed from checkpoint at step %d.", int(state.step))
    else:
      state = exp.fresh_state()
    first_step = int(state.step)
    _write_config(workdir, config, first_step)
    tokenizer = getattr(exp.data.source, "tokenizer", None)
    if tokenizer is not None and jax.process_index() == 0:
      layout.keep_tokenizer(workdir, tokenizer)  # Loading and exporting the run need no data cache.
    writer = metrics_lib.Writer(workdir, start_step=first_step, trackers=exp.trackers, config=config.to_dict())
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    processes = f"{jax.process_count()} process" + ("es" if jax.process_count() > 1 else "")
    logging.info("%s: %s parameters, %d steps (%d per epoch), global batch %d; %s, %s; "
                 "train state %.1f MiB per device.", exp.model.name, f"{num_params:,}", total_steps, steps_per_epoch,
                 exp.data.batch_size, strategy.describe(), processes, strategy.bytes_per_device(exp.abstract_state) / 2**20)

    host_memory.give_back_freed()  # And what reading the weights left.

    # ---- Loop -------------------------------------------------------------------------
    progress = metrics_lib.Progress(first_step, total_steps, exp.data.batch_size, train_seconds,
                                    tokens_per_example=exp.tokens_per_example,
                                    flops_per_example=exp.flops_per_example, peak_flops=exp.peak_flops)
    for step in range(first_step + 1, total_steps + 1):
      batch = strategy.shard(next(train_iter))  # The one transfer a step means: its batch to the devices.
      with jax.transfer_guard("disallow"):  # Any other is a mistake (device_get at log time is explicit).
        exp.profile.at(step, state, workdir)  # config.profile: a trace of a few steps.
        state, step_metrics = exp.train_step(state, batch)
      pending.append(step_metrics)
      written = {}  # The metrics written at this step.

      if step % exp.log_every == 0 or step == total_steps:
        train_metrics = _mean_of(pending, first_step=step - len(pending) + 1)
        pending = []
        rates = progress.measure(step)
        row = {f"train/{k}": v for k, v in {**train_metrics, **rates, "epoch": step / steps_per_epoch}.items()}
        writer.write(step, row)
        metrics_lib.log_progress(metrics_lib.progress_line(step, total_steps, train_metrics, rates))
        written.update(row)

      preempted = preemption.reached(step)
      save = preempted or ckpt.due(step, total_steps)
      due = [scheduled for scheduled in exp.evaluators if scheduled.due(step, total_steps)]
      if due or save:
        jax.block_until_ready(state)  # The steps in flight are training time, not evaluation.
        with progress.pause():  # Evaluators and Orbax move what they need to the host their own way.
          pending = _on_host(pending)
          _check_finite(pending, first_step=step - len(pending) + 1)  # Never evaluate or save a diverged state.
          for scheduled in due:
            result = scheduled.evaluator.run(step_lib.variables_of(state))
            row = {f"{scheduled.name}/{k}": v for k, v in result.items()}
            writer.write(step, row)
            writer.write_texts(step, scheduled.name, evals.texts_of(scheduled.evaluator))
            metrics_lib.log(metrics_lib.eval_line(scheduled.name, result))
            written.update(row)
          save = stopping.after_evaluations(step, written) or save  # A new best, or the stop: saved.
          # After the evaluations: a saved step always has its rows, so a resume never skips one.
          if save:
            writer.flush()
            ckpt.save(step, state, train_iter, {"pending": pending, "metrics": {**last, **written},
                                                "config": config.to_dict(),
                                                "train_seconds": progress.train_seconds,
                                                "early_stopping": stopping.state()}, written)
      last.update(written)
      if preempted:
        raise Preempted(step)  # `finally` waits for the save to be complete.
      if stopping.stopped:
        break  # Saved above; the reason is logged.
  except NonFiniteLoss as e:
    # A bad loss or gradient comes from the state saved just before the step: not a good
    # one to resume from (bad params are the step's own, and never saved).
    moved = ckpt.set_aside_from(e.first_bad_state)
    if moved:
      raise NonFiniteLoss(f"{e}; checkpoints {', '.join(map(str, moved))} gave or followed it and were moved "
                          f"to {workdir}/{layout.SET_ASIDE}", e.step, e.first_bad_state) from None
    raise
  finally:
    try:
      if ckpt:
        ckpt.close()  # Waits for a save in flight.
    finally:  # Each runs even if one before it raises (a full disk fails several).
      try:
        if writer:
          writer.close()
      finally:
        preemption.stop()
        if lock:
          lock.release()
  return last


def _check_same_data_order(saved, config, step, workdir):
  """Refuses to resume where the data position would not mean the same examples: the
  checkpoint holds the index of the next global batch, whose examples depend on the
  batch size and the seed."""
  now = config.to_dict()
  for path in (("input", "batch_size"), ("seed",)):
    before, after = saved, now
    for key in path:
      before, after = (before or {}).get(key), (after or {}).get(key)
    if before != after:
      name = ".".join(path)
      raise UserError(f"checkpoint {step} in {workdir} was saved with {name}={before!r}, not {after!r}: resuming "
                      f"would jump to other examples; resume with {name}={before!r}, or use a new --workdir")


def _check_workdir(workdir):
  if storage.is_gcs(workdir):
    return  # Checked before the build.
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"--workdir={workdir} is a file, not a directory; pick another path")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create --workdir={workdir}: {e.strerror}; pick a writable directory") from None
  problem = storage.writable_problem(workdir)
  if problem:
    raise UserError(f"--workdir={workdir} is not writable ({problem}); pick a writable directory")


def _write_config(workdir, config, first_step):
  """Writes config.json. Resuming with a changed config logs what changed and keeps the
  earlier one as config_history/until_step_<N>.json (N: where the new one takes over)."""
  if jax.process_index() != 0:
    return
  path = layout.config_path(workdir)
  text = config.to_json_best_effort(indent=2, sort_keys=True) + "\n"
  if first_step > 0 and storage.exists(path):
    before = storage.read_text(path)
    if before != text:
      flat = config_lib.flatten(layout.read_config(workdir))  # One line if the file is damaged.
      changes = _differences(flat, config_lib.flatten(json.loads(text)))
      logging.warning("Resuming at step %d with a changed config: %s.", first_step, "; ".join(changes) or "formatting")
      storage.makedirs(os.path.join(workdir, layout.CONFIG_HISTORY))
      storage.write_text(os.path.join(workdir, layout.CONFIG_HISTORY, f"until_step_{first_step}.json"), before)
  storage.write_text(path, text)


def _differences(before, after):
  return [f"{key} {before.get(key)!r} -> {after.get(key)!r}"
          for key in sorted(before.keys() | after.keys()) if before.get(key) != after.get(key)]


def _on_host(pending):
  """Per-step metrics as plain floats, fetched from the device in one transfer."""
  return [{k: float(v) for k, v in m.items()} for m in jax.device_get(pending)]


def _mean_of(pending, first_step):
  """Interval means; skipped steps (skip_nonfinite) are counted, not averaged in. An
  interval where every step was skipped has no loss to show: only lr and the count."""
  values = _on_host(pending)
  _check_finite(values, first_step)
  kept = [v for v in values if not v.get("skipped")]
  keys = [k for k in values[0] if k != "skipped" and (kept or k == "lr")]
  means = {k: float(np.mean([v[k] for v in (kept or values)])) for k in keys}
  if "skipped" in values[0]:
    means["skipped_steps"] = int(sum(v["skipped"] for v in values))
  return means


_WATCHED = (("loss", "the loss"), ("grad_norm", "the gradient norm"), ("param_norm", "the parameter norm"))


def _check_finite(values, first_step):
  """Raises NonFiniteLoss for the first step in `values` (host floats) whose loss,
  gradients or new parameters are not finite."""
  for offset, row in enumerate(values):
    bad = [(key, what, row[key]) for key, what in _WATCHED if key in row and not np.isfinite(row[key])]
    if not bad:
      continue
    step, (key, what, value) = first_step + offset, bad[0]
    first_bad_state = step if key == "param_norm" else step - 1
    if step == 1 and key != "param_norm":
      raise NonFiniteLoss(f"{what} is {value} at step 1, before any update: check the input values "
                          f"(input.pp) and the model's initialisation", step, first_bad_state)
    raise NonFiniteLoss(f"{what} is {value} at step {step}; lower optimizer.lr or set "
                        f"optimizer.grad_clip_norm, and run again to resume from the last good checkpoint",
                        step, first_bad_state)
