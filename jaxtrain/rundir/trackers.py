"""Experiment trackers beside metrics.jsonl and TensorBoard: `config.trackers`.

    config.trackers = dict(wandb=dict(project="digits"))                 # offline by default
    config.trackers = dict(wandb=dict(project="digits", mode="online", entity="me"))
    config.trackers = dict(mine=dict(type="my_project.trackers:Csv", path="x.csv"))

A tracker is a class taking its config section (a Reader: read every key there, so a typo
fails at start-up) with four methods, registered with `@TRACKERS.register('name')` or named
as 'module.path:Class' in `type`:

    start(workdir, config, start_step)   # config: the run's config as a dict
    write(step, scalars)                 # {'train/loss': 0.31, ...}, as metrics.jsonl gets them
    write_texts(step, name, records)     # an evaluator's texts, e.g. samples' prompts and completions
    close()

Only process 0 starts them (as it alone writes metrics.jsonl). On a resume, rows past the
checkpoint are written again from the same steps: trackers that require increasing steps
(Weights & Biases) keep their first copy and say so.
"""

import os
import uuid

from jaxtrain.errors import UserError
from jaxtrain.registry import Registry
from jaxtrain.rundir import storage

TRACKERS = Registry("tracker")


def build(section):
  """The trackers of `config.trackers` (a Reader), made and checked at start-up."""
  made = []
  for name in sorted(section.keys()):
    entry = section.section(name)
    made.append(TRACKERS.get(entry.get("type", name, kind=str))(entry))
  return made


@TRACKERS.register("wandb")
class WandB:
  """Weights & Biases: `mode='offline'` (the default) writes WORKDIR/wandb/ with no network;
  `wandb sync WORKDIR/wandb/offline-run-*` uploads it later. A resumed run continues the
  same W&B run (its id is kept in WORKDIR/wandb_run_id)."""

  MODES = ("offline", "online", "disabled")

  def __init__(self, section):
    try:
      import wandb  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise UserError(f"config key '{section.path('')[:-1]}' needs the wandb package: pip install -e '.[wandb]'") \
          from None
    self.wandb = wandb
    self.options = dict(project=section.get("project", "jaxtrain", kind=str), entity=section.get("entity", kind=str),
                        name=section.get("name", kind=str), mode=section.get("mode", "offline", kind=str),
                        tags=list(section.get("tags", (), kind=object)))
    if self.options["mode"] not in self.MODES:
      raise UserError(f"config key '{section.path('mode')}' is '{self.options['mode']}'; the modes are "
                      f"{', '.join(self.MODES)}")
    self.run = None

  def start(self, workdir, config, start_step):
    id_path = os.path.join(workdir, "wandb_run_id")
    if storage.exists(id_path):
      run_id = storage.read_text(id_path).strip()
    else:
      run_id = uuid.uuid4().hex[:12]
      storage.write_text(id_path, run_id)
    options = dict(self.options, name=self.options["name"] or os.path.basename(storage.absolute(workdir)))
    # W&B keeps its own files on a local disk: for a gs:// run, in ./wandb (its default).
    local = None if storage.is_gcs(workdir) else workdir
    self.run = self.wandb.init(id=run_id, resume="allow", dir=local, config=config, **options)

  def write(self, step, scalars):
    self.run.log(scalars, step=step)  # A step W&B has passed (a resume's replay) is dropped with a warning.

  def write_texts(self, step, name, records):
    columns = sorted({key for record in records for key in record})
    table = self.wandb.Table(columns=columns, data=[[str(r.get(c, "")) for c in columns] for r in records])
    self.write(step, {f"{name}/samples": table})

  def close(self):
    if self.run is not None:
      self.run.finish()
      self.run = None
