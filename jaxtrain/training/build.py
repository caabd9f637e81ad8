"""Building a run from its config: data, model, optimizer and evaluators, each alone (so
evaluation, the dry run and lr_find reuse them), and `build`, which compiles every step.
Nothing here touches a work directory: any mistake fails before anything is written.
"""

import dataclasses
import functools
import traceback
from typing import Any

import jax
import numpy as np

from jaxtrain import config as config_lib
from jaxtrain import data
from jaxtrain.errors import UserError, did_you_mean, first_line
from jaxtrain import evals
from jaxtrain import models
from jaxtrain.models import lora as lora_lib
from jaxtrain import parallel
from jaxtrain.rundir import trackers as trackers_lib
from jaxtrain import step as step_lib
from jaxtrain import tasks
from jaxtrain.training import accelerators
from jaxtrain.training import early_stopping
from jaxtrain.training import init_from as init_from_lib
from jaxtrain.training import optim
from jaxtrain.training import profiling


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

  def fresh_state(self):
    """The train state of a fresh start: initialised in place, then `init_from`'s weights."""
    if not self.init_from:
      return self.strategy.init(self.create, self.abstract_state)
    return self.init_from.apply(self.strategy.init(self.init_from.create_fn(self.create), self.abstract_state))

  def batches(self):
    """An iterator over this process's training batches (checkpointable: Grain's)."""
    return data.pipeline.iterate(self.data.train_ds, num_threads=self.data.num_threads, prefetch=self.data.prefetch)

  @property
  def tokens_per_example(self):
    return tokens_per_example(self.model, self.data.first_batch)


# What `build` reads that evaluating a checkpoint does not: the training run checked them.
TRAINING_SECTIONS = ("optimizer", "schedule", "checkpoint", "init_from", "early_stopping", "profile", "trackers")
TRAINING_KEYS = ("skip_nonfinite", "peak_tflops_per_device")


def skip_training_keys(cfg):
  """Marks training's own keys read (see `config_lib.check_all_read`), typos in the rest
  still caught: for an evaluation that builds data, model and evaluators alone."""
  for key in cfg.keys():
    if key in TRAINING_SECTIONS + TRAINING_KEYS or key.startswith(("total_", "log_every_")):
      cfg.get(key)
      if key in TRAINING_SECTIONS:
        cfg.section(key).to_dict()


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


def tokens_per_example(model, batch):
  """Tokens in one example, for a sequence task (tokens/s); None otherwise."""
  if not model.task.count_name:
    return None
  return int(np.prod(batch[next(iter(model.task.reads()))].shape[1:]))


def _flops_per_example(model, batch):
  """Training FLOPs per example where the model can say (`flops_per_token(seq_len)`)."""
  tokens = tokens_per_example(model, batch)
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


