"""Evaluation without training: `--mode=eval` runs every configured evaluator on a
checkpoint of a work directory (the newest, or `--step=N`) and appends the results to its
metrics.jsonl and TensorBoard, at that checkpoint's step.

It changes no checkpoint and takes no lock, so it can follow a live training run. It
builds only what evaluation uses: the data (for the model's input shapes), the model and
the evaluators; no optimizer and no train step, and it restores only the model's variables.
"""

import os

from absl import logging

from jaxtrain.checkpoints import checkpointer as checkpoint
from jaxtrain import config as config_lib
from jaxtrain import evals
from jaxtrain.training import init_from as init_from_lib
from jaxtrain.rundir import metrics as metrics_lib
from jaxtrain.rundir import storage
from jaxtrain import train
from jaxtrain.errors import UserError


def run(config, workdir, step=None):
  """Returns {'<evaluator>/<metric>': value} for checkpoint `step` (default: the newest)."""
  workdir = storage.one_spelling(workdir)
  cfg = config_lib.Reader(init_from_lib.resolve_model(config, workdir))
  strategy, _ = train.build_strategy(cfg)
  seed = cfg.get("seed", 0, minimum=0)
  data = train.build_data(cfg, strategy, seed)
  model = train.build_model(cfg, data)
  abstract = train.abstract_variables(strategy, model, seed)
  evaluators = train.build_evaluators(cfg, strategy, model, data, abstract)
  _mark_training_keys_read(cfg)
  config_lib.check_all_read(cfg)
  if not storage.isdir(os.path.join(workdir, "checkpoints")):
    raise UserError(f"--workdir={workdir} has no checkpoints to evaluate")
  ckpt = checkpoint.Checkpointer(workdir, read_only=True)
  saved = ckpt.all_steps()
  step = saved[-1] if step is None and saved else step
  if step not in saved:
    raise UserError(f"--workdir={workdir} has no checkpoint at step {step}; it has "
                    f"{', '.join(map(str, saved)) or 'none'}")
  variables = ckpt.restore_variables(step, abstract)
  ckpt.close()
  writer = metrics_lib.Writer(workdir, start_step=None)
  results = {}
  try:
    for scheduled in evaluators:
      result = scheduled.evaluator.run(variables)
      writer.write(step, {f"{scheduled.name}/{k}": v for k, v in result.items()})
      writer.write_texts(step, scheduled.name, evals.texts_of(scheduled.evaluator))
      metrics_lib.log(metrics_lib.eval_line(scheduled.name, result))
      results.update({f"{scheduled.name}/{k}": v for k, v in result.items()})
  finally:
    writer.close()
  logging.info("Evaluated checkpoint %d of %s.", step, workdir)
  return results


def _mark_training_keys_read(cfg):
  """Training's own sections are not checked here (the run that trained checked them);
  the keys evaluation reads still are, typos included."""
  for key in cfg.keys():
    sections = ("optimizer", "schedule", "checkpoint", "init_from", "early_stopping", "profile", "trackers")
    if key in sections + ("skip_nonfinite", "peak_tflops_per_device") or key.startswith(("total_", "log_every_")):
      cfg.get(key)
      if key in sections:
        cfg.section(key).to_dict()
