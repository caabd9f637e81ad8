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
from jaxtrain.errors import UserError
from jaxtrain import evals
from jaxtrain.rundir import layout
from jaxtrain.rundir import metrics as metrics_lib
from jaxtrain.rundir import storage
from jaxtrain.training import build as build_lib
from jaxtrain.training import init_from as init_from_lib


def run(config, workdir, step=None):
  """Returns {'<evaluator>/<metric>': value} for checkpoint `step` (default: the newest)."""
  workdir = storage.one_spelling(workdir)
  check_writable(workdir)
  cfg = config_lib.Reader(init_from_lib.resolve_model(config, workdir))
  strategy, _ = build_lib.build_strategy(cfg)
  seed = cfg.get("seed", 0, minimum=0)
  data = build_lib.build_data(cfg, strategy, seed)
  model = build_lib.build_model(cfg, data)
  abstract = build_lib.abstract_variables(strategy, model, seed)
  evaluators = build_lib.build_evaluators(cfg, strategy, model, data, abstract)
  build_lib.skip_training_keys(cfg)
  config_lib.check_all_read(cfg)
  if not layout.has_checkpoints(workdir):
    raise UserError(f"--workdir={workdir} has no checkpoints to evaluate")
  ckpt = checkpoint.Checkpointer(workdir, read_only=True)
  step = layout.pick_step(ckpt.all_steps(), step, workdir, key="--step")
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


def check_writable(workdir):
  """The results are appended to the run's metrics.jsonl (samples.jsonl, tensorboard/): a
  run that cannot take them says so before anything is built or restored. Tried, not
  asked (see storage.writable_problem). A gs:// run's permissions show at the first write."""
  if storage.is_gcs(workdir) or not os.path.isdir(workdir):
    return  # None there: "no checkpoints to evaluate", after the config is checked.
  for name in ("", layout.TENSORBOARD, layout.METRICS, layout.SAMPLES):
    path = os.path.join(workdir, name) if name else workdir
    problem = (storage.writable_problem(path) if os.path.isdir(path) else
               storage.appendable_problem(path) if os.path.isfile(path) else None)
    if problem:
      raise UserError(f"--workdir={workdir}: cannot write in {path} ({problem}); evaluation appends its results to "
                      f"{layout.METRICS} there: make the run writable, or evaluate a copy")
