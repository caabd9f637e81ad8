"""Orbax checkpoints of the train state and the data iterator, in `workdir/checkpoints/`.

Each saved step is one directory, `checkpoints/<step>/`, with one item each for
  params     the model parameters (a fine-tuning run can restore these alone),
  opt_state  the optimizer state,
  rest       step, RNG key and model state (batch statistics),
  data       the Grain iterator position of this process,
  metadata   JSON: the per-step metrics since the last log (so a resumed run logs the
             same averages as an uninterrupted one), the last metrics, the resolved
             config and the training seconds so far.
Saves are asynchronous: training goes on while the files are written, and Orbax only
makes a step visible once all of it is on disk.
"""

import dataclasses
import json
import os
from typing import Any

from absl import logging
import grain
import jax
import orbax.checkpoint as ocp

from jaxtrain import config as config_lib
from jaxtrain.errors import UserError, first_line


class Checkpointer:

  def __init__(self, workdir, *, every_steps=None, keep=3, keep_best=0, best_metric=None, best_mode="max",
               read_only=False):
    """Keeps the `keep` newest checkpoints and, with `keep_best`, also that many of the best
    by `best_metric` (highest for best_mode 'max', lowest for 'min'). `read_only` opens an
    existing directory to read (evaluation) and changes nothing."""
    self.every_steps = every_steps
    self.best_metric = best_metric if keep_best else None
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    policies = [ocp.checkpoint_managers.LatestN(n=keep)]
    if keep_best:
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=lambda metrics: metrics[best_metric], reverse=best_mode == "min", n=keep_best,
          keep_checkpoints_without_metrics=False))
    self._manager = ocp.CheckpointManager(
        self.directory,
        item_handlers={**{name: ocp.StandardCheckpointHandler() for name in _ARRAY_ITEMS},
                       "data": _DataHandler(), "metadata": ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            create=not read_only, read_only=read_only, enable_async_checkpointing=True),
    )

  def due(self, step, total_steps):
    return config_lib.due(step, self.every_steps, total_steps)

  def save(self, step, state, data_iterator, metadata, metrics_now):
    """`metadata`: JSON-able, e.g. {'pending': [{metric: float}, ...], ...}; `metrics_now`:
    the metrics written at this step (ranks it when keeping the best)."""
    arrays = {name: ocp.args.StandardSave(tree) for name, tree in _split(state).items()}
    best = {self.best_metric: metrics_now[self.best_metric]} if self.best_metric in metrics_now else None
    self._manager.save(step, metrics=best, args=ocp.args.Composite(
        **arrays, data=_DataSave(data_iterator), metadata=ocp.args.JsonSave(metadata)))

  def restore_newest(self, abstract_state, data_iterator):
    """(state, metadata) of the newest checkpoint that reads, or None if there is none; it
    moves `data_iterator` in place. A newer checkpoint that does not read (damaged, or cut
    short outside Orbax's atomic rename) is set aside with a warning naming its step."""
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        return self.restore(step, abstract_state, data_iterator)
      except _Unreadable as e:
        logging.warning("%s; setting it aside and resuming from the one before.", e)
        self._move_aside([step])
    return None

  def restore(self, step, abstract_state, data_iterator=None):
    """(state, metadata) of checkpoint `step`, and `data_iterator` (if given) moved in place."""
    wanted = _split(abstract_state)
    try:
      stored = self._manager.item_metadata(step)
      saved = _shapes({name: stored[name] for name in _ARRAY_ITEMS})
    except Exception as e:  # pylint: disable=broad-except  (unreadable, whatever the cause)
      raise _Unreadable(f"checkpoint {self.directory}/{step} is damaged or unreadable ({_why(e)})") from e
    mismatches = _mismatches(saved, _shapes(wanted))
    if mismatches:
      raise UserError(f"checkpoint {self.directory}/{step} does not fit this run's model or optimizer "
                      f"({'; '.join(mismatches[:5])}{'; ...' if len(mismatches) > 5 else ''}); "
                      f"resume with the config it was saved with, or use a new --workdir")
    items = {name: ocp.args.StandardRestore(tree) for name, tree in wanted.items()}
    if data_iterator is not None:
      items["data"] = _DataRestore(data_iterator)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items, metadata=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      raise _Unreadable(f"checkpoint {self.directory}/{step} is damaged or unreadable ({_why(e)})") from e
    state = abstract_state.replace(params=restored["params"], opt_state=restored["opt_state"], **restored["rest"])
    return state, restored["metadata"]

  def all_steps(self):
    return sorted(self._manager.all_steps())

  def set_aside_from(self, step):
    """Moves the checkpoints of `step` and later out of the way of a resume (see
    `_move_aside`). Returns the steps moved."""
    self._manager.wait_until_finished()
    moved = sorted(saved for saved in self._manager.all_steps() if saved >= step)
    self._move_aside(moved)
    return moved

  def _move_aside(self, steps):
    """To `checkpoints_set_aside/<step>`: still there to look at, no longer resumed from."""
    if steps and jax.process_index() == 0:
      aside = os.path.join(os.path.dirname(self.directory), "checkpoints_set_aside")
      os.makedirs(aside, exist_ok=True)
      for step in steps:
        target, n = os.path.join(aside, str(step)), 1
        while os.path.exists(target):  # Set aside before, by an earlier run.
          target, n = os.path.join(aside, f"{step}.{n}"), n + 1
        os.rename(os.path.join(self.directory, str(step)), target)
    self._manager.reload()  # Forget the steps it listed.

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


_ARRAY_ITEMS = ("params", "opt_state", "rest")


class _DataHandler(grain.checkpoint.CheckpointHandler):
  """Grain's handler (one file per process, `process_<i>-of-<n>.json`), which can also
  resume with another number of processes: every process's position is the index of the
  next global batch, the same on all of them (see data/pipeline.py), so process 0's file
  of a run with another count says where each process is."""

  def restore(self, directory, item=None, args=None):
    iterator = item or args.item
    own = directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    saved = sorted(directory.glob("process_0-of-*.json"))
    if own.exists() or not saved:
      return super().restore(directory, item, args)
    iterator.set_state(json.loads(saved[0].read_text()))
    iterator.start_prefetch()
    return iterator


@ocp.args.register_with_handler(_DataHandler, for_save=True)
@dataclasses.dataclass
class _DataSave(ocp.args.CheckpointArgs):
  item: Any


@ocp.args.register_with_handler(_DataHandler, for_restore=True)
@dataclasses.dataclass
class _DataRestore(ocp.args.CheckpointArgs):
  item: Any


class _Unreadable(UserError):
  """A checkpoint that cannot be read."""


def _why(error):
  return f"{type(error).__name__}: {first_line(error, 200)}"


def _split(state):
  """A TrainState as the checkpoint's array items."""
  return {"params": state.params, "opt_state": state.opt_state,
          "rest": {"step": state.step, "rng": state.rng, "model_state": state.model_state}}


def _mismatches(saved, wanted):
  """What differs between the saved state's arrays and the ones this run expects."""
  params_first = lambda key: (not key.startswith("params/"), key)
  found = [f"{key}: saved {saved[key]}, expected {wanted[key]}"
           for key in sorted(saved.keys() & wanted.keys(), key=params_first) if saved[key] != wanted[key]]
  found += [f"{key}: only in the checkpoint" for key in sorted(saved.keys() - wanted.keys())]
  found += [f"{key}: not in the checkpoint" for key in sorted(wanted.keys() - saved.keys())]
  return found


def _shapes(tree):
  """{'params/Dense_0/kernel': 'float32[64,256]'}, whatever the containers (dict, dataclass, tuple)."""
  def name(key):
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)
  return {"/".join(name(k) for k in path): f"{leaf.dtype}[{','.join(map(str, leaf.shape))}]"
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
