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

from jaxtrain.training import accelerators
from jaxtrain.checkpoints import checkpointer as checkpoint
from jaxtrain import config as config_lib
from jaxtrain import data
from jaxtrain.training import early_stopping
from jaxtrain import evals
from jaxtrain.training import init_from as init_from_lib
from jaxtrain.models import lora as lora_lib
from jaxtrain.rundir import metrics as metrics_lib
from jaxtrain import models
from jaxtrain.training import optim
from jaxtrain.training import parallel
from jaxtrain.training import profiling
from jaxtrain import step as step_lib
from jaxtrain.rundir import storage
from jaxtrain import tasks
from jaxtrain.rundir import trackers as trackers_lib
from jaxtrain.errors import UserError, did_you_mean, first_line
from jaxtrain.rundir.preemption import Preempted, PreemptionWatch
from jaxtrain.rundir.lock import lock_for


@dataclasses.dataclass(frozen=True)
class Data:
  """The training input: what `build_data` makes of `config.input`."""
  source: Any             # The training split (len, read(indices)).
  batch_size: int
  steps_per_epoch: int
  first_batch: Any        # This process's first batch: shapes for compiling.
  train_ds: Any           # Grain MapDataset of this process's batches.
  num_threads: int
  prefetch: int
  data_dir: str | None

  @property
  def durations(self):
    """What `config_lib.steps` needs to turn epochs and examples into steps."""
    return dict(steps_per_epoch=self.steps_per_epoch, batch_size=self.batch_size)


@dataclasses.dataclass(frozen=True)
class Model:
  """The model, its task, and how to make its variables: what `build_model` makes."""
  name: str
  module: Any             # The Flax module.
  task: Any
  example_inputs: Any     # (args, kwargs) of zeros shaped like one example: for init.


@dataclasses.dataclass(frozen=True)
class Experiment:
  """What `build` makes of a config. Nothing in it has touched a work directory."""
  config: Any
  strategy: Any
  data: Data
  model: Model
  total_steps: int
  log_every: int
  create: Any             # () -> a fresh TrainState.
  abstract_state: Any
  train_step: Any         # Compiled: (state, batch) -> (state, metrics).
  evaluators: list
  checkpointing: dict     # Checkpointer arguments.
  flops_per_example: float | None  # For MFU, when the model can say (see metrics.Progress).
  peak_flops: float | None         # Per second, all devices together.
  early_stopping: Any = None       # An early_stopping.Rule, or None.
  init_from: Any = None            # An init_from.Plan for a fresh start, or None.
  profile: Any = None              # A profiling.Profile: which steps to trace.
  trackers: list = dataclasses.field(default_factory=list)  # config.trackers (W&B, ...), not started.


class NonFiniteLoss(UserError):
  """The loss (or the gradients, or the parameters) became NaN or infinite at `step`;
  the train state of `first_bad_state` and later ones are not to be resumed from."""

  def __init__(self, message, step, first_bad_state=None):
    super().__init__(message)
    self.step = step
    self.first_bad_state = step - 1 if first_bad_state is None else first_bad_state


# ---- Building: each part alone, so evaluation and fine-tuning reuse them --------------------


def build_strategy(cfg):
  """The Strategy of `config.parallel` and its accumulate_steps."""
  parallel_config = cfg.section("parallel")
  strategy = parallel.Strategy(parallel_config)
  return strategy, parallel_config.get("accumulate_steps", 1, minimum=1)


def build_data(cfg, strategy, seed, accumulate_steps=1):
  """`config.input`: the training split, its batches, and the durations they define."""
  batch_size = cfg.input.batch_size
  strategy.check_batch_size(batch_size, "input.batch_size", multiple_of=accumulate_steps)
  data_dir = cfg.input.data.get("data_dir", kind=str)
  source = data.open_from_config(cfg.input.data)
  steps_per_epoch = len(source) // batch_size
  train_ds = data.pipeline.train_dataset(
      source, preprocess=data.ops.parse(cfg.input.get("pp", "")), global_batch_size=batch_size, seed=seed,
      process_index=strategy.process_index, process_count=strategy.process_count)
  return Data(source=source, batch_size=batch_size, steps_per_epoch=steps_per_epoch, first_batch=train_ds[0],
              train_ds=train_ds, num_threads=cfg.input.get("num_threads", 2, minimum=1),
              prefetch=cfg.input.get("prefetch", 4, minimum=1), data_dir=data_dir)


def build_model(cfg, data_):
  """`config.model` and `config.task` (with `config.loss`), checked against the data."""
  module = models.build(cfg.model)
  task = tasks.build(cfg)
  first_batch = data_.first_batch
  task.check_batch(first_batch, "input.pp")
  tokenizer = getattr(data_.source, "tokenizer", None)
  if tokenizer and getattr(module, "vocab_size", tokenizer.vocab_size) < tokenizer.vocab_size:
    raise UserError(f"model.vocab_size={module.vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size} "
                    f"ids; set model.vocab_size={tokenizer.vocab_size}")
  args, kwargs = task.model_inputs(first_batch)
  example = jax.tree.map(lambda x: np.zeros((1,) + x.shape[1:], x.dtype), (list(args), kwargs))
  module = _must_fit("initialising the model",  # config.lora: adapters on Dense layers.
                     lambda: lora_lib.wrap(cfg.section("lora"), module, example))
  return Model(name=cfg.model.name, module=module, task=task, example_inputs=example)


def build_evaluators(cfg, strategy, model, data_, abstract_variables):
  """`config.evals`, each compiled for the model's variables."""
  context = evals.Context(model=model.module, task=model.task, strategy=strategy, batch_size=data_.batch_size,
                          data_dir=data_.data_dir, train_source=data_.source, abstract_variables=abstract_variables)
  return _must_fit("building the evaluators", lambda: evals.build_all(cfg.section("evals"), context, data_.durations))


def abstract_variables(strategy, model, seed):
  """Shapes and shardings of the model's variables alone (evaluation without an optimizer)."""
  return _must_fit("initialising the model", lambda: strategy.abstract_state(
      functools.partial(step_lib.init_variables, model.module, model.example_inputs, seed)))


def build(config, workdir=None):
  """Everything a training run needs, from the config: data, model, optimizer, the train
  and eval steps compiled for their shapes, evaluators, and where `workdir` has no
  checkpoint yet, the plan of `config.init_from`. Any mistake fails here, before anything
  is written."""
  config = init_from_lib.resolve_model(config, workdir)  # init_from.model: the source's architecture.
  cfg = config_lib.Reader(config)
  strategy, accumulate_steps = build_strategy(cfg)
  seed = cfg.get("seed", 0, minimum=0)
  data_ = build_data(cfg, strategy, seed, accumulate_steps)
  total_steps = config_lib.steps(cfg, "total", **data_.durations)
  log_every = config_lib.steps(cfg, "log_every", default=min(50, total_steps), **data_.durations)
  model = build_model(cfg, data_)

  # Parameter groups (optimizer.freeze, lr_mults, wd_mults) by name: shapes are enough. Logs the counts.
  params_shapes = _must_fit("initialising the model",
                            lambda: step_lib.abstract_params(model.module, model.example_inputs, seed))
  groups = optim.param_groups(cfg.optimizer, params_shapes,
                              trainable_only=lora_lib.trainable_only(model.module))  # LoRA: adapters alone.
  tx, lr_fn = optim.build(cfg.optimizer, cfg.section("schedule"), total_steps=total_steps, groups=groups,
                          **data_.durations)
  create = functools.partial(step_lib.create_state, model.module, tx, model.example_inputs, seed)
  abstract_state = _must_fit("initialising the model", lambda: strategy.abstract_state(create))
  init_plan = init_from_lib.plan_for(cfg.section("init_from"), abstract_state, model.module, workdir)
  step_fn = step_lib.make_train_step(model.module, model.task, tx, lr_fn, skip_nonfinite=cfg.get("skip_nonfinite", False),
                                     accumulate_steps=accumulate_steps, axis_name=strategy.axis_name,
                                     trainable=groups.trainable)
  train_step = _must_fit("compiling the train step (input.pp, model, task, loss, optimizer)",
                         lambda: strategy.compile_train_step(step_fn, abstract_state, data_.first_batch))

  evaluators = build_evaluators(cfg, strategy, model, data_, step_lib.variables_of(abstract_state))
  ckpt_config = cfg.section("checkpoint")
  every_steps = config_lib.steps(ckpt_config, "every", default=None, **data_.durations)
  checkpointing = dict(every_steps=every_steps, keep=ckpt_config.get("keep", 3, minimum=1),
                       **_best_checkpoints(ckpt_config, evaluators, every_steps, log_every, model.task))
  early = early_stopping.build(cfg.section("early_stopping"), evaluators)
  profile, trackers = profiling.Profile(cfg.section("profile"), total_steps), trackers_lib.build(cfg.section("trackers"))
  peak_flops = _peak_flops(cfg.get("peak_tflops_per_device", kind=float))
  config_lib.check_all_read(cfg)  # Every key was read: nothing in the config is a typo.
  return Experiment(config=config, strategy=strategy, data=data_, model=model, total_steps=total_steps,
                    log_every=log_every, create=create, abstract_state=abstract_state, train_step=train_step,
                    evaluators=evaluators, checkpointing=checkpointing, early_stopping=early,
                    flops_per_example=_flops_per_example(model, data_.first_batch), peak_flops=peak_flops,
                    init_from=init_plan, profile=profile, trackers=trackers)


def run(config, workdir):
  """Trains as `config` says, in `workdir`; resumes from its newest checkpoint if any.

  Returns the metrics of the last log and evaluation, keyed '<prefix>/<name>'.
  """
  workdir = storage.one_spelling(workdir)
  exp = build(config, workdir)
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
    train_iter = data.pipeline.iterate(exp.data.train_ds, num_threads=exp.data.num_threads, prefetch=exp.data.prefetch)
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
      state = strategy.init(exp.create, exp.abstract_state)
      if exp.init_from:
        state = exp.init_from.apply(state)
    first_step = int(state.step)
    _write_config(workdir, config, first_step)
    _keep_tokenizer(workdir, getattr(exp.data.source, "tokenizer", None))
    writer = metrics_lib.Writer(workdir, start_step=first_step, trackers=exp.trackers, config=config.to_dict())
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    processes = f"{jax.process_count()} process" + ("es" if jax.process_count() > 1 else "")
    logging.info("%s: %s parameters, %d steps (%d per epoch), global batch %d; %s, %s; "
                 "train state %.1f MiB per device.", exp.model.name, f"{num_params:,}", total_steps, steps_per_epoch,
                 exp.data.batch_size, strategy.describe(), processes, strategy.bytes_per_device(exp.abstract_state) / 2**20)

    # ---- Loop -------------------------------------------------------------------------
    progress = metrics_lib.Progress(first_step, total_steps, exp.data.batch_size, train_seconds,
                                    tokens_per_example=_tokens_per_example(exp.model, exp.data.first_batch),
                                    flops_per_example=exp.flops_per_example, peak_flops=exp.peak_flops)
    for step in range(first_step + 1, total_steps + 1):
      exp.profile.at(step, state, workdir)  # config.profile: a trace of a few steps.
      state, step_metrics = exp.train_step(state, strategy.shard(next(train_iter)))
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
        with progress.pause():
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
                          f"to {workdir}/checkpoints_set_aside", e.step, e.first_bad_state) from None
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


def _best_checkpoints(ckpt_config, evaluators, every_steps, log_every, task):
  """Checkpointer arguments for checkpoint.keep_best / best_metric / best_mode.

  Every periodic save must find the metric measured at its own step: a checkpoint
  without it cannot be ranked, and ranking it by an older value would rank other params."""
  keep_best = ckpt_config.get("keep_best", 0, minimum=0)
  if not keep_best:
    return {}
  metric = ckpt_config.get("best_metric", config_lib.REQUIRED, kind=str)
  mode = ckpt_config.get("best_mode", "max")
  measured = {f"train/{name}": (log_every, "log_every_steps") for name in task.metric_names}
  for s in evaluators:
    for name in getattr(s.evaluator, "metric_names", ()):
      measured[f"{s.name}/{name}"] = (s.every_steps, f"evals.{s.name}.every_steps")
  if metric not in measured:
    raise UserError(f"checkpoint.best_metric='{metric}' is not a metric of this run{did_you_mean(metric, measured)}; "
                    f"it has {', '.join(sorted(measured))}")
  if mode not in ("max", "min"):
    raise UserError(f"checkpoint.best_mode must be 'max' or 'min', got {mode!r}")
  metric_every, key = measured[metric]
  if every_steps is not None and (metric_every is None or every_steps % metric_every):
    when = "only at the end of training" if metric_every is None else f"every {metric_every} steps ({key})"
    raise UserError(f"checkpoint.best_metric='{metric}' is measured {when}, but checkpoints are saved every "
                    f"{every_steps} steps (checkpoint.every_*): not every checkpoint could be ranked; make the "
                    f"checkpoint interval a multiple of the metric's")
  return dict(keep_best=keep_best, best_metric=metric, best_mode=mode)


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


def _tokens_per_example(model, batch):
  """Tokens in one example, for a sequence task (tokens/s); None otherwise."""
  if not model.task.count_name:
    return None
  return int(np.prod(batch[next(iter(model.task.reads()))].shape[1:]))


def _flops_per_example(model, batch):
  """Training FLOPs per example where the model can say (`flops_per_token(seq_len)`)."""
  tokens = _tokens_per_example(model, batch)
  if tokens is None or not hasattr(model.module, "flops_per_token"):
    return None
  return model.module.flops_per_token(tokens) * tokens


# Dense bfloat16 peaks, in TFLOP/s per device, by jax.Device.device_kind (vendor figures).
def _peak_flops(per_device_tflops):
  """FLOP/s of all devices at their peak: config.peak_tflops_per_device, else the
  vendor's figure for a known accelerator, else None (no MFU: e.g. on CPUs)."""
  if per_device_tflops is None:
    per_device_tflops = accelerators.peak_tflops(jax.devices()[0].device_kind)
  elif not per_device_tflops > 0:
    raise UserError(f"config key 'peak_tflops_per_device' must be positive, got {per_device_tflops!r}")
  return per_device_tflops * 1e12 * jax.device_count() if per_device_tflops else None


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
  if storage.is_gcs(workdir):
    storage.check_bucket(workdir)
    return
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
  if first_step > 0 and storage.exists(path):
    before = storage.read_text(path)
    if before != text:
      changes = _differences(_flat(json.loads(before)), _flat(json.loads(text)))
      logging.warning("Resuming at step %d with a changed config: %s.", first_step, "; ".join(changes) or "formatting")
      storage.makedirs(os.path.join(workdir, "config_history"))
      storage.write_text(os.path.join(workdir, "config_history", f"until_step_{first_step}.json"), before)
  storage.write_text(path, text)


def _keep_tokenizer(workdir, tokenizer):
  """A copy of the run's tokenizer beside config.json (and its tokenizer_config.json, which
  names the special tokens): `jaxtrain.lm.load` and `export` need no data cache."""
  if tokenizer is None or jax.process_index() != 0:
    return
  names = {tokenizer.path: tokenizer.file_name}
  special = os.path.join(os.path.dirname(tokenizer.path), "tokenizer_config.json")
  if tokenizer.kind != "sentencepiece" and os.path.exists(special):
    names[special] = "tokenizer_config.json"
  for source, name in names.items():
    storage.copy_in(source, os.path.join(workdir, name))


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
