"""Evaluators: named sections of `config.evals`, each run on its own schedule.

    config.evals.val = dict(type='classification', data=dict(name=..., split=...), pp=...,
                            every_epochs=1, batch_size=...)

An evaluator class is built as `cls(config, model=, loss_fn=, strategy=, batch_size=)`,
reads its own keys from `config`, and has `run(state) -> {metric: value}`; the loop
writes each value as '<section name>/<metric>'. Register new ones with
`@EVALUATORS.register('type')`, or name one as 'module.path:Class'.
"""

import dataclasses

from jaxtrain import config as config_lib
from jaxtrain.registry import Registry

EVALUATORS = Registry("evaluator")

from jaxtrain.evals import classification  # pylint: disable=wrong-import-position,unused-import


@dataclasses.dataclass
class Scheduled:
  name: str
  evaluator: object
  every_steps: int | None  # None: only at the end of training.

  def due(self, step, total_steps):
    return step == total_steps or (self.every_steps is not None and step % self.every_steps == 0)


def build_all(evals_config, *, durations, **kwargs):
  """One Scheduled evaluator per section of `config.evals`."""
  scheduled = []
  for name in evals_config.keys():
    section = evals_config.get(name)
    every = config_lib.steps(section, "every", default=None, **durations)
    cls = EVALUATORS.get(section.type)
    scheduled.append(Scheduled(name, cls(section, **kwargs), every))
  return scheduled
