"""Evaluators: named sections of `config.evals`, each run on its own schedule.

    config.evals.val = dict(type='classification', data=dict(name=..., split=...), pp=...,
                            every_epochs=1, batch_size=...)

An evaluator class is built as `cls(section, context)`: it reads its own keys from the
config `section`, takes what it needs from the `Context`, and compiles its step there
and then (so a mistake fails at start-up). `run(state) -> {metric: value}` evaluates; the
loop writes each value as '<section name>/<metric>'. Its `metric_names` lists the metrics
`run` returns (checkpoint.best_metric may name one). Register new ones with
`@EVALUATORS.register('type')`, or name one as 'module.path:Class'.
"""

import dataclasses
from typing import Any

from jaxtrain import config as config_lib
from jaxtrain.registry import Registry

EVALUATORS = Registry("evaluator")


@dataclasses.dataclass(frozen=True)
class Context:
  model: Any
  loss_fn: Any
  strategy: Any
  batch_size: int        # Default: the training batch size.
  data_dir: str | None   # Default: the training data's directory.
  abstract_state: Any    # Shapes, dtypes and shardings of the TrainState.


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


from jaxtrain.evals import classification  # pylint: disable=wrong-import-position,unused-import
