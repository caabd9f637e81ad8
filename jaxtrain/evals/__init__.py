"""Evaluators: named sections of `config.evals`, each run on its own schedule.

    config.evals.val = dict(type='task', data=dict(name=..., split=...), pp=...,
                            every_epochs=1, batch_size=...)

An evaluator class is built as `cls(section, context)`: it reads its own keys from the
config `section`, takes what it needs from the `Context`, and compiles its functions there
and then (so a mistake fails at start-up). `run(variables) -> {metric: value}` evaluates
the model's variables ({'params': ..., 'batch_stats': ...}: no optimizer state, so an
evaluation-only run never builds one); the loop writes each value as '<section
name>/<metric>'. Its `metric_names` lists the metrics `run` returns (checkpoint.best_metric
may name one). What an evaluator may ask of the Context:
  sums:     `context.compile(step.make_eval_sums(context.model, context.task), batch)`, added
            over batches, then `context.task.metrics(sums)` (the built-in 'task' evaluator);
  outputs:  any `fn(variables, batch) -> {name: [batch, ...]}` through
            `context.compile_outputs`, then `gather(compiled, variables, batches, strategy)`:
            per-example arrays of every real example on the host (features for a probe,
            per-choice scores);
  its own:  whatever else it compiles with `context.compile` (or jax.jit) itself.
An evaluator that also makes text (samples) has `texts()`: records (dicts of strings) of its
last run, which go to samples.jsonl and TensorBoard's text tab, never to metrics.jsonl.
Register new ones with `@EVALUATORS.register('type')`, or name one as 'module.path:Class'.
"""

import dataclasses
from typing import Any

import grain
import jax
import numpy as np

from jaxtrain import config as config_lib
from jaxtrain.data.pipeline import MASK
from jaxtrain.registry import Registry

EVALUATORS = Registry("evaluator")


@dataclasses.dataclass(frozen=True)
class Context:
  model: Any
  task: Any
  strategy: Any
  batch_size: int           # Default: the training batch size.
  data_dir: str | None      # Default: the training data's directory.
  train_source: Any         # Text evaluators take its tokenizer and sequence length.
  abstract_variables: Any   # Shapes, dtypes and shardings of the model's variables.

  def compile(self, fn, local_batch):
    """`fn(variables, batch) -> outputs`, compiled for this batch's shapes; outputs come
    back whole on every process."""
    return self.strategy.compile_eval(fn, self.abstract_variables, local_batch)

  def compile_outputs(self, fn, local_batch):
    """`fn(variables, batch) -> per-example arrays`, compiled to return them with the
    batch's mask, for `gather`."""
    return self.compile(lambda variables, batch: (fn(variables, batch), batch[MASK]), local_batch)


def read_ahead(batches):
  """Iterates a Grain MapDataset of batches with a few prepared ahead on threads."""
  return batches.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))


def gather(compiled, variables, batches, strategy):
  """{name: numpy [examples, ...]}: the per-example outputs of `compiled` (made by
  `Context.compile_outputs`) over `batches` (from data.pipeline.eval_batches), padding
  dropped, in the order of the global batches; the same on every process."""
  parts = []
  for batch in read_ahead(batches):
    out, mask = jax.device_get(compiled(variables, strategy.shard(batch)))
    parts.append(jax.tree.map(lambda x, real=np.asarray(mask) > 0: np.asarray(x)[real], out))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)


def texts_of(evaluator):
  """The text records of an evaluator's last run ([] for those that make none)."""
  return evaluator.texts() if hasattr(evaluator, "texts") else []


@dataclasses.dataclass
class Scheduled:
  name: str
  evaluator: Any
  every_steps: int | None  # None: only at the end of training.

  def due(self, step, total_steps):
    return config_lib.due(step, self.every_steps, total_steps)


def build_all(evals_config, context, durations):
  """One Scheduled evaluator per section of `config.evals`."""
  scheduled = []
  for name in evals_config.keys():
    section = evals_config.section(name)
    every = config_lib.steps(section, "every", default=None, **durations)
    cls = EVALUATORS.get(section.type)
    scheduled.append(Scheduled(name, cls(section, context), every))
  return scheduled


from jaxtrain.evals import kshot_prompts, linear_probes, samples, task_metrics  # pylint: disable=wrong-import-position,unused-import
