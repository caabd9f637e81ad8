"""The training loop: config in, trained and evaluated model out, everything in `workdir`.

Read it top to bottom: build everything from the config and compile every step (so any
mistake fails before the work directory is touched), start fresh or resume, then loop.
The loop never waits for the device except when it logs, saves or evaluates.
"""

import dataclasses
import functools
import json
import os
import traceback
from typing import Any

from absl import logging
import jax
import numpy as np

from jaxtrain import checkpoint
from jaxtrain import config as config_lib
from jaxtrain import data
from jaxtrain import evals
from jaxtrain import losses
from jaxtrain import metrics as metrics_lib
from jaxtrain import models
from jaxtrain import optim
from jaxtrain import parallel
from jaxtrain import step as step_lib
from jaxtrain.errors import UserError, did_you_mean, first_line
from jaxtrain.preemption import Preempted, PreemptionWatch
from jaxtrain.workdir_lock import WorkdirLock


@dataclasses.dataclass(frozen=True)
class Experiment:
  """What `build` makes of a config. Nothing in it has touched a work directory."""
  config: Any
  strategy: Any
  model_name: str
  batch_size: int
  steps_per_epoch: int
  total_steps: int
  log_every: int
  train_ds: Any           # Grain MapDataset of this process's batches.
  num_threads: int
  prefetch: int
  create: Any             # () -> a fresh TrainState.
  abstract_state: Any
  train_step: Any         # Compiled: (state, batch) -> (state, metrics).
  evaluators: list
  checkpointing: dict     # Checkpointer arguments.


class NonFiniteLoss(UserError):
  """The loss became NaN or infinite at `step`."""

  def __init__(self, message, step):
    super().__init__(message)
    self.step = step


def build(config):
  """Everything a run needs, from the config: data, model, optimizer, the train and eval
  steps compiled for their shapes, evaluators. Any mistake fails here, before anything is
  written."""
  cfg = config_lib.Reader(config)
  parallel_config = cfg.section("parallel")
  strategy = parallel.Strategy(parallel_config)
  accumulate_steps = parallel_config.get("accumulate_steps", 1, minimum=1)
  seed = cfg.get("seed", 0, minimum=0)

  # ---- Input ------------------------------------------------------------------------
  batch_size = cfg.input.batch_size
  strategy.check_batch_size(batch_size, "input.batch_size", multiple_of=accumulate_steps)
  data_dir = cfg.input.data.get("data_dir", kind=str)
  train_source = data.open_from_config(cfg.input.data)
  steps_per_epoch = len(train_source) // batch_size
  durations = dict(steps_per_epoch=steps_per_epoch, batch_size=batch_size)
  total_steps = config_lib.steps(cfg, "total", **durations)
  log_every = config_lib.steps(cfg, "log_every", default=min(50, total_steps), **durations)
  train_ds = data.pipeline.train_dataset(
      train_source, preprocess=data.ops.parse(cfg.input.pp), global_batch_size=batch_size, seed=seed,
      process_index=strategy.process_index, process_count=strategy.process_count)
  num_threads = cfg.input.get("num_threads", 2, minimum=1)
  prefetch = cfg.input.get("prefetch", 4, minimum=1)

  # ---- Model, loss, optimizer ---------------------------------------------------------
  model = models.build(cfg.model)
  loss_fn = losses.build(cfg.loss)
  tx, lr_fn = optim.build(cfg.optimizer, cfg.section("schedule"), total_steps=total_steps, **durations)
  first_batch = train_ds[0]
  step_lib.check_batch(first_batch, "input.pp")
  example_input = np.zeros((1,) + first_batch["image"].shape[1:], first_batch["image"].dtype)
  create = functools.partial(step_lib.create_state, model, tx, example_input, seed)
  abstract_state = _must_fit("initialising the model", lambda: strategy.abstract_state(create))
  step_fn = step_lib.make_train_step(model, tx, loss_fn, lr_fn, skip_nonfinite=cfg.get("skip_nonfinite", False),
                                     accumulate_steps=accumulate_steps, axis_name=strategy.axis_name)
  train_step = _must_fit("compiling the train step (input.pp, model, loss, optimizer)",
                         lambda: strategy.compile_train_step(step_fn, abstract_state, first_batch))

  # ---- Evaluators and checkpoints -----------------------------------------------------
  context = evals.Context(model=model, loss_fn=loss_fn, strategy=strategy, batch_size=batch_size,
                          data_dir=data_dir, abstract_state=abstract_state)
  evaluators = _must_fit("building the evaluators", lambda: evals.build_all(cfg.section("evals"), context, durations))
  ckpt_config = cfg.section("checkpoint")
  checkpointing = dict(every_steps=config_lib.steps(ckpt_config, "every", default=None, **durations),
                       keep=ckpt_config.get("keep", 3, minimum=1),
                       **_best_checkpoints(ckpt_config, evaluators))
  config_lib.check_all_read(cfg)  # Every key was read: nothing in the config is a typo.
  return Experiment(config=config, strategy=strategy, model_name=cfg.model.name, batch_size=batch_size,
                    steps_per_epoch=steps_per_epoch, total_steps=total_steps, log_every=log_every,
                    train_ds=train_ds, num_threads=num_threads, prefetch=prefetch, create=create,
                    abstract_state=abstract_state, train_step=train_step, evaluators=evaluators,
                    checkpointing=checkpointing)


def run(config, workdir):
  """Trains as `config` says, in `workdir`; resumes from its newest checkpoint if any.

  Returns the metrics of the last log and evaluation, keyed '<prefix>/<name>'.
  """
  exp = build(config)
  strategy, total_steps, steps_per_epoch = exp.strategy, exp.total_steps, exp.steps_per_epoch

  # ---- Work directory: fresh start or resume ------------------------------------------
  _check_workdir(workdir)
  lock = WorkdirLock(workdir).acquire() if jax.process_index() == 0 else None  # flock does not span hosts.
  preemption = PreemptionWatch().start()
  ckpt = writer = None
  last = {}
  try:
    ckpt = checkpoint.Checkpointer(workdir, **exp.checkpointing)
    train_iter = data.pipeline.iterate(exp.train_ds, num_threads=exp.num_threads, prefetch=exp.prefetch)
    pending = []  # Per-step metrics since the last log: on the device until the next log.
    train_seconds = 0.0
    restored = ckpt.restore_newest(exp.abstract_state, train_iter)
    if restored:
      state, metadata = restored
      pending, train_seconds = metadata["pending"], metadata["train_seconds"]
      if int(state.step) > total_steps:
        raise UserError(f"the newest checkpoint in {workdir} is at step {int(state.step)}, past the "
                        f"{total_steps} steps this config trains for; raise the total or use a new --workdir")
      logging.info("Resumed from checkpoint at step %d.", int(state.step))
    else:
      state = strategy.init(exp.create, exp.abstract_state)
    first_step = int(state.step)
    _write_config(workdir, config, first_step)
    writer = metrics_lib.Writer(workdir, start_step=first_step)
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    processes = f"{jax.process_count()} process" + ("es" if jax.process_count() > 1 else "")
    logging.info("%s: %s parameters, %d steps (%d per epoch), global batch %d; %s, %s; "
                 "train state %.1f MiB per device.", exp.model_name, f"{num_params:,}", total_steps, steps_per_epoch,
                 exp.batch_size, strategy.describe(), processes, strategy.bytes_per_device(exp.abstract_state) / 2**20)

    # ---- Loop -------------------------------------------------------------------------
    progress = metrics_lib.Progress(first_step, total_steps, exp.batch_size, train_seconds)
    for step in range(first_step + 1, total_steps + 1):
      state, step_metrics = exp.train_step(state, strategy.shard(next(train_iter)))
      pending.append(step_metrics)
      written = {}  # The metrics written at this step.

      if step % exp.log_every == 0 or step == total_steps:
        train_metrics = _mean_of(pending, first_step=step - len(pending) + 1)
        pending = []
        rates = progress.measure(step)
        row = {f"train/{k}": v for k, v in {**train_metrics, **rates, "epoch": step / steps_per_epoch}.items()}
        writer.write(step, row)
        metrics_lib.log(metrics_lib.progress_line(step, total_steps, train_metrics, rates))
        written.update(row)

      preempted = preemption.reached(step)
      save = preempted or ckpt.due(step, total_steps)
      due = [scheduled for scheduled in exp.evaluators if scheduled.due(step, total_steps)]
      if due or save:
        jax.block_until_ready(state)  # The steps in flight are training time, not evaluation.
        with progress.pause():
          pending = _on_host(pending)
          _check_finite(pending, first_step=step - len(pending) + 1)  # Never evaluate or save a diverged state.
          for scheduled in due:
            result = scheduled.evaluator.run(state)
            row = {f"{scheduled.name}/{k}": v for k, v in result.items()}
            writer.write(step, row)
            metrics_lib.log(metrics_lib.eval_line(scheduled.name, result))
            written.update(row)
          # After the evaluations: a saved step always has its rows, so a resume never skips one.
          if save:
            ckpt.save(step, state, train_iter, {"pending": pending, "metrics": {**last, **written},
                                                "config": config.to_dict(),
                                                "train_seconds": progress.train_seconds}, written)
      last.update(written)
      if preempted:
        raise Preempted(step)  # `finally` waits for the save to be complete.
  except NonFiniteLoss as e:
    # The state saved just before the bad step produced it: not a good one to resume from.
    moved = ckpt.set_aside_from(e.step - 1)
    if moved:
      raise NonFiniteLoss(f"{e}; checkpoints {', '.join(map(str, moved))} gave or followed it and were moved "
                          f"to {workdir}/checkpoints_set_aside", e.step) from None
    raise
  finally:
    if ckpt:
      ckpt.close()  # Waits for a save in flight.
    if writer:
      writer.close()
    preemption.stop()
    if lock:
      lock.release()
  return last


def _best_checkpoints(ckpt_config, evaluators):
  """Checkpointer arguments for checkpoint.keep_best / best_metric / best_mode."""
  keep_best = ckpt_config.get("keep_best", 0, minimum=0)
  if not keep_best:
    return {}
  metric = ckpt_config.get("best_metric", config_lib.REQUIRED, kind=str)
  mode = ckpt_config.get("best_mode", "max")
  known = {f"{s.name}/{name}" for s in evaluators for name in getattr(s.evaluator, "metric_names", ())}
  known |= {"train/loss", "train/accuracy"}
  if metric not in known:
    raise UserError(f"checkpoint.best_metric='{metric}' is not a metric of this run{did_you_mean(metric, known)}; "
                    f"it has {', '.join(sorted(known))}")
  if mode not in ("max", "min"):
    raise UserError(f"checkpoint.best_mode must be 'max' or 'min', got {mode!r}")
  return dict(keep_best=keep_best, best_metric=metric, best_mode=mode)


def _must_fit(what, build):
  """Runs `build` (which traces or compiles): an error there is a mistake in the config or
  in the experiment's own code, reported with the innermost frame outside the libraries
  (`--traceback` shows the whole story)."""
  try:
    return build()
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    ours = [f for f in traceback.extract_tb(e.__traceback__) if "site-packages" not in f.filename]
    where = f" (at {ours[-1].filename}:{ours[-1].lineno})" if ours else ""
    raise UserError(f"{what} failed: {type(e).__name__}: {first_line(e)}{where}") from e


def _check_workdir(workdir):
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"--workdir={workdir} is a file, not a directory; pick another path")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create --workdir={workdir}: {e.strerror}; pick a writable directory") from None
  if not os.access(workdir, os.W_OK):
    raise UserError(f"--workdir={workdir} is not writable; pick a writable directory")


def _write_config(workdir, config, first_step):
  """Writes config.json. Resuming with a changed config logs what changed and keeps the
  earlier one as config_history/until_step_<N>.json (N: where the new one takes over)."""
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, "config.json")
  text = config.to_json_best_effort(indent=2, sort_keys=True) + "\n"
  if os.path.exists(path) and first_step > 0:
    with open(path, encoding="utf-8") as f:
      before = f.read()
    if before != text:
      changes = _differences(_flat(json.loads(before)), _flat(json.loads(text)))
      logging.warning("Resuming at step %d with a changed config: %s.", first_step, "; ".join(changes) or "formatting")
      os.makedirs(os.path.join(workdir, "config_history"), exist_ok=True)
      os.replace(path, os.path.join(workdir, "config_history", f"until_step_{first_step}.json"))
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def _flat(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _differences(before, after):
  return [f"{key} {before.get(key)!r} -> {after.get(key)!r}"
          for key in sorted(before.keys() | after.keys()) if before.get(key) != after.get(key)]


def _on_host(pending):
  """Per-step metrics as plain floats, fetched from the device in one transfer."""
  return [{k: float(v) for k, v in m.items()} for m in jax.device_get(pending)]


def _mean_of(pending, first_step):
  """Interval means; skipped steps (skip_nonfinite) are counted, not averaged in."""
  values = _on_host(pending)
  _check_finite(values, first_step)
  kept = [v for v in values if not v.get("skipped")] or values[-1:]
  means = {k: float(np.mean([v[k] for v in kept])) for k in values[0] if k != "skipped"}
  if "skipped" in values[0]:
    means["skipped_steps"] = int(sum(v["skipped"] for v in values))
  return means


def _check_finite(values, first_step):
  """Raises NonFiniteLoss for the first bad loss in `values` (host floats)."""
  losses_ = np.asarray([m["loss"] for m in values])
  bad = np.flatnonzero(~np.isfinite(losses_))
  if bad.size:
    step = first_step + int(bad[0])
    if step == 1:
      raise NonFiniteLoss(f"loss is {losses_[bad[0]]} at step 1, before any update: check the input values "
                          f"(input.pp) and the model's initialisation", step)
    raise NonFiniteLoss(f"loss is {losses_[bad[0]]} at step {step}; lower optimizer.lr or set "
                        f"optimizer.grad_clip_norm, and run again to resume from the last good checkpoint", step)
