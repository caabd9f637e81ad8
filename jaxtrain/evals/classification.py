"""Accuracy and loss of the model's logits over a whole split, every example exactly once."""

import grain
import jax
import jax.numpy as jnp

from jaxtrain import data
from jaxtrain import step as step_lib
from jaxtrain.evals import EVALUATORS


@EVALUATORS.register("classification")
class Classification:
  """Reads `data` (name, split, data_dir, cache), `pp` and optionally `batch_size`."""

  metric_names = ("accuracy", "loss", "num_examples")

  def __init__(self, config, context):
    self.source = data.open_from_config(config.data, default_data_dir=context.data_dir)
    self.preprocess = data.ops.parse(config.pp, where=config.path("pp"))
    self.batch_size = config.get("batch_size", context.batch_size)
    self.strategy = strategy = context.strategy
    strategy.check_batch_size(self.batch_size, config.path("batch_size"))
    first = self._batches()[0]
    step_lib.check_batch(first, config.path("pp"))
    self.eval_step = strategy.compile_eval_step(step_lib.make_eval_step(context.model, context.loss_fn),
                                                context.abstract_state, first)

  def _batches(self):
    return data.pipeline.eval_batches(
        self.source, preprocess=self.preprocess, global_batch_size=self.batch_size,
        process_index=self.strategy.process_index, process_count=self.strategy.process_count)

  def run(self, state):
    sums = None
    for batch in self._batches().to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)):
      out = self.eval_step(state, self.strategy.shard(batch))
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = jax.device_get(sums)
    weight = float(sums["weight"]) or float("nan")  # The number of examples, unless batches carry 'weights'.
    return {"accuracy": float(sums["correct"]) / weight, "loss": float(sums["loss_sum"]) / weight,
            "num_examples": int(sums["count"])}
