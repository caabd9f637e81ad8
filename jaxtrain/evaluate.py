"""Evaluation without training: `--mode=eval` runs every configured evaluator on a
checkpoint of a work directory (the newest, or `--step=N`) and appends the results to its
metrics.jsonl and TensorBoard, at that checkpoint's step.

It changes no checkpoint and takes no lock, so it can follow a live training run.
"""

import os

from absl import logging

from jaxtrain import checkpoint
from jaxtrain import metrics as metrics_lib
from jaxtrain import train
from jaxtrain.errors import UserError


def run(config, workdir, step=None):
  """Returns {'<evaluator>/<metric>': value} for checkpoint `step` (default: the newest)."""
  exp = train.build(config)
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise UserError(f"--workdir={workdir} has no checkpoints to evaluate")
  ckpt = checkpoint.Checkpointer(workdir, read_only=True)
  saved = ckpt.all_steps()
  step = saved[-1] if step is None and saved else step
  if step not in saved:
    raise UserError(f"--workdir={workdir} has no checkpoint at step {step}; it has "
                    f"{', '.join(map(str, saved)) or 'none'}")
  state, _ = ckpt.restore(step, exp.abstract_state)
  ckpt.close()
  writer = metrics_lib.Writer(workdir, start_step=None)
  results = {}
  try:
    for scheduled in exp.evaluators:
      result = scheduled.evaluator.run(state)
      writer.write(step, {f"{scheduled.name}/{k}": v for k, v in result.items()})
      metrics_lib.log(metrics_lib.eval_line(scheduled.name, result))
      results.update({f"{scheduled.name}/{k}": v for k, v in result.items()})
  finally:
    writer.close()
  logging.info("Evaluated checkpoint %d of %s.", step, workdir)
  return results
