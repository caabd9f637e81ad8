"""The task's loss and metrics over a whole split, every example (and token) exactly once.

Registered as 'task', and as 'classification' and 'lm' for configs that read better so:
all three are this evaluator. For a language model it reports loss, accuracy (of the next
token), perplexity and, when the data carries 'bytes', bits_per_byte, with num_tokens.
"""

import jax
import numpy as np

from jaxtrain import data
from jaxtrain.evals import EVALUATORS, read_ahead
from jaxtrain import step as step_lib


@EVALUATORS.register("task")
@EVALUATORS.register("classification")
@EVALUATORS.register("lm")
class TaskMetrics:
  """Reads `data` (as input.data; unset keys come from the training data), `pp` and
  optionally `batch_size`."""

  def __init__(self, config, context):
    self.source = data.open_from_config(config.data, default_data_dir=context.data_dir, like=context.train_source)
    self.preprocess = data.ops.parse(config.get("pp", ""), where=config.path("pp"))
    self.batch_size = config.get("batch_size", context.batch_size)
    self.strategy = strategy = context.strategy
    self.task = context.task
    strategy.check_batch_size(self.batch_size, config.path("batch_size"))
    first = self._batches()[0]
    self.task.check_batch(first, config.path("pp"))
    self.metric_names = tuple(self.task.metric_names) + ("num_examples",) + (
        (self.task.count_name,) if self.task.count_name else ())
    self.eval_sums = context.compile(step_lib.make_eval_sums(context.model, self.task), first)

  def _batches(self):
    return data.pipeline.eval_batches(
        self.source, preprocess=self.preprocess, global_batch_size=self.batch_size,
        process_index=self.strategy.process_index, process_count=self.strategy.process_count)

  def run(self, variables):
    sums = {}
    for batch in read_ahead(self._batches()):
      # Added up on the host in float64: float32 counts stop being exact past 2^24
      # (16.7M tokens), and the host waiting for each batch's few scalars costs nothing.
      for key, value in jax.device_get(self.eval_sums(variables, self.strategy.shard(batch))).items():
        sums[key] = sums.get(key, 0.0) + np.float64(value)
    # An all-zero weight gives NaN, not an exception.
    with np.errstate(divide="ignore", invalid="ignore"):
      metrics = {k: float(v) for k, v in self.task.metrics(sums).items()}
    metrics["num_examples"] = int(sums["count"])
    if self.task.count_name:
      metrics[self.task.count_name] = int(round(sums["weight"]))
    return metrics
