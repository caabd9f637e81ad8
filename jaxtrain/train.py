"""The training loop: config in, trained and evaluated model out, everything in `workdir`.

Read it top to bottom: build everything from the config (failing fast on any mistake),
prepare the work directory, start fresh or resume, then loop. The loop never waits for
the device except when it logs, evaluates or saves.
"""

import functools
import os

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
from jaxtrain.errors import UserError


class NonFiniteLoss(UserError):
  """The loss became NaN or infinite."""


def run(config, workdir):
  """Trains as `config` says, in `workdir`; resumes from its newest checkpoint if any.

  Returns the metrics of the last log and evaluation, keyed '<prefix>/<name>'.
  """
  cfg = config_lib.Reader(config)
  strategy = parallel.Strategy()
  seed = cfg.seed

  # ---- Input ------------------------------------------------------------------------
  batch_size = cfg.input.batch_size
  strategy.check_batch_size(batch_size, "input.batch_size")
  train_source = data.open_from_config(cfg.input.data)
  steps_per_epoch = len(train_source) // batch_size
  durations = dict(steps_per_epoch=steps_per_epoch, batch_size=batch_size)
  total_steps = config_lib.steps(cfg, "total", **durations)
  log_every = config_lib.steps(cfg, "log_every", default=min(50, total_steps), **durations)
  train_ds = data.pipeline.train_dataset(
      train_source, preprocess=data.ops.parse(cfg.input.pp), global_batch_size=batch_size, seed=seed,
      process_index=strategy.process_index, process_count=strategy.process_count)

  # ---- Model, loss, optimizer, evaluators, checkpoints --------------------------------
  model = models.build(cfg.model)
  loss_fn = losses.build(cfg.loss)
  tx, lr_fn = optim.build(cfg.optimizer, cfg.section("schedule"),
                          total_steps=total_steps, **durations)
  evaluators = evals.build_all(cfg.section("evals"), durations=durations, model=model, loss_fn=loss_fn,
                               strategy=strategy, batch_size=batch_size)
  ckpt_config = cfg.section("checkpoint")
  ckpt_every = config_lib.steps(ckpt_config, "every", default=None, **durations)
  ckpt_keep = ckpt_config.get("keep", 3)
  num_threads = cfg.input.get("num_threads", 2)
  prefetch = cfg.input.get("prefetch", 4)
  config_lib.check_all_read(cfg)  # Every key was read: nothing in the config is a typo.

  # ---- Work directory -----------------------------------------------------------------
  _prepare_workdir(workdir, config)
  writer = metrics_lib.Writer(workdir)
  ckpt = checkpoint.Checkpointer(workdir, every_steps=ckpt_every, keep=ckpt_keep)

  # ---- Fresh start or resume ----------------------------------------------------------
  first_images = train_ds[0]["image"]
  example_input = np.zeros((1,) + first_images.shape[1:], first_images.dtype)
  create = functools.partial(step_lib.create_state, model, tx, example_input, seed)
  train_iter = data.pipeline.iterate(train_ds, num_threads=num_threads, prefetch=prefetch)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(ckpt.latest_step(), strategy.abstract_state(create), train_iter)
    logging.info("Resumed from checkpoint at step %d.", int(state.step))
  else:
    state = strategy.init(create)
  first_step = int(state.step)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info("%s: %s parameters, %d steps (%d per epoch), global batch %d, %d devices.",
               cfg.model.name, f"{num_params:,}", total_steps, steps_per_epoch, batch_size, jax.device_count())
  train_step = strategy.compile_train_step(step_lib.make_train_step(model, tx, loss_fn, lr_fn))

  # ---- Loop ---------------------------------------------------------------------------
  progress = metrics_lib.Progress(first_step, total_steps, batch_size)
  pending = []  # Per-step metrics, still on the device until the next log.
  last = {}
  try:
    for step in range(first_step + 1, total_steps + 1):
      state, step_metrics = train_step(state, strategy.shard(next(train_iter)))
      pending.append(step_metrics)

      if step % log_every == 0 or step == total_steps:
        train_metrics = _mean_of(pending, first_step=step - len(pending) + 1)
        pending = []
        rates = progress.measure(step)
        row = {f"train/{k}": v for k, v in {**train_metrics, **rates, "epoch": step / steps_per_epoch}.items()}
        writer.write(step, row)
        metrics_lib.log(metrics_lib.progress_line(step, total_steps, train_metrics, rates))
        last.update(row)

      due = [scheduled for scheduled in evaluators if scheduled.due(step, total_steps)]
      if due or ckpt.due(step, total_steps):
        with progress.pause():  # Rates count training only.
          for scheduled in due:
            result = scheduled.evaluator.run(state)
            row = {f"{scheduled.name}/{k}": v for k, v in result.items()}
            writer.write(step, row)
            metrics_lib.log(metrics_lib.eval_line(scheduled.name, result))
            last.update(row)
          if ckpt.due(step, total_steps):
            _check_finite(pending, first_step=step - len(pending) + 1)  # Never save a diverged state.
            ckpt.save(step, state, train_iter)
  finally:
    ckpt.close()  # Waits for a save in flight: it holds a good state.
    writer.close()
  return last


def _prepare_workdir(workdir, config):
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"--workdir={workdir} is a file, not a directory; pick another path")
  try:
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
      with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
  except OSError as e:
    raise UserError(f"cannot write to --workdir={workdir}: {e.strerror}; pick a writable directory") from None


def _mean_of(pending, first_step):
  """Averages per-step metrics fetched from the device in one transfer."""
  values = jax.device_get(pending)
  _check_finite(values, first_step)
  return {k: float(np.mean([v[k] for v in values])) for k in values[0]}


def _check_finite(pending, first_step):
  losses_ = np.asarray(jax.device_get([m["loss"] for m in pending]))
  bad = np.flatnonzero(~np.isfinite(losses_))
  if bad.size:
    raise NonFiniteLoss(f"loss is {losses_[bad[0]]} at step {first_step + bad[0]}; lower optimizer.lr or "
                        f"set optimizer.grad_clip_norm (checkpoints up to the last good step are kept)")

