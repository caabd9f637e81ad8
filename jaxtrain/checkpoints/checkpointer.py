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
makes a step visible once all of it is on disk (it writes `<step>.orbax-checkpoint-tmp`
and renames it).

A checkpoint that does not restore is set aside only on evidence that it is damaged,
found by reading its files directly (`find_damage`): a missing item or file, JSON that
does not parse, array data that tensorstore cannot read back (truncated, undecodable).
Any other failure (out of memory, the storage failing, a timeout, a shape Orbax refuses)
stops the run with that error and moves nothing, and a damaged checkpoint is moved only
once an older one has restored: never the last one, never into a fresh start.
"""

import dataclasses
import json
import logging as std_logging
import os
import sys
from typing import Any

from absl import logging
import grain
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from jaxtrain.checkpoints import faults
from jaxtrain.checkpoints.faults import Damaged, RestoreFailed, find_damage
from jaxtrain import config as config_lib
from jaxtrain.errors import UserError, first_line
from jaxtrain import paths
from jaxtrain.rundir import layout
from jaxtrain.rundir import peers
from jaxtrain.rundir import storage


class Checkpointer:

  def __init__(self, workdir, *, every_steps=None, keep=3, keep_best=0, best_metric=None, best_mode="max",
               read_only=False):
    """Keeps the `keep` newest checkpoints and, with `keep_best`, also that many of the best
    by `best_metric` (highest for best_mode 'max', lowest for 'min'). `read_only` opens an
    existing directory to read (evaluation) and changes nothing."""
    self.every_steps = every_steps
    self.best_metric = best_metric if keep_best else None
    self.directory = layout.checkpoints(workdir)
    faults.quiet_orbax_disk_full()
    faults.quiet_orbax_leftovers()
    self._pinned = _Pinned()  # See keep_also.
    policies = [ocp.checkpoint_managers.LatestN(n=keep), self._pinned]
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
            create=not read_only, read_only=read_only, enable_async_checkpointing=True,
            save_interval_steps=0 if read_only else 1),  # Orbax warns when read_only has it at 1.
    )

  def due(self, step, total_steps):
    return config_lib.due(step, self.every_steps, total_steps)

  def keep_also(self, step):
    """Keeps checkpoint `step` beyond `keep` (early stopping's best), in place of the one
    this named before. Call it before saving `step`: Orbax picks the checkpoints to
    delete when a save starts (and deletes them once it is on disk)."""
    self._pinned.steps = {step}

  def save(self, step, state, data_iterator, metadata, metrics_now):
    """`metadata`: JSON-able, e.g. {'pending': [{metric: float}, ...], ...}; `metrics_now`:
    the metrics written at this step (ranks it when keeping the best)."""
    arrays = {name: ocp.args.StandardSave(tree) for name, tree in _split(state).items()}
    best = {self.best_metric: metrics_now[self.best_metric]} if self.best_metric in metrics_now else None
    with self._disk_full_as_one_line():  # Here surfaces the failure of the save before, too.
      self._manager.save(step, metrics=best, args=ocp.args.Composite(
          **arrays, data=_DataSave(data_iterator), metadata=ocp.args.JsonSave(metadata)))

  def restore_newest(self, abstract_state, data_iterator):
    """(state, metadata) of the newest checkpoint that restores, or None if there is none;
    it moves `data_iterator` in place.

    A damaged checkpoint (see `find_damage`) is passed over, and moved to
    `checkpoints_set_aside/` with a warning once an older one has restored. Any other
    failure stops here (RestoreFailed) and moves nothing; so does finding every checkpoint
    damaged: starting afresh would drop the run's history (its metrics.jsonl rows)."""
    damaged = []  # Damaged, newest first.
    for step in sorted(self._manager.all_steps(), reverse=True):
      outcome, result, error = _OK, None, None
      try:
        result = self.restore(step, abstract_state, data_iterator)
      except Damaged as e:
        outcome, error = _DAMAGED, e
      except UserError as e:  # RestoreFailed, or a checkpoint that does not fit the config.
        outcome, error = _FAILED, e
      # Every process must go on with the same checkpoint. Each reads only its own shards,
      # so one may find damage (or fail) where the others restored.
      agreed = _agree(outcome)
      if agreed == _OK:
        if damaged:
          self._move_aside([d.step for d in damaged])
          for d in damaged:
            logging.warning("%s; moved it to %s/%d and resumed from checkpoint %d, the newest that restores.",
                            d, self._aside, d.step, step)
        return result
      if agreed == _FAILED:
        if error is None or outcome != _FAILED:
          error = RestoreFailed(f"another process could not restore checkpoint {self.directory}/{step} (its "
                                f"output says why); nothing was moved; fix that and run the same command again")
        if damaged:
          raise UserError(f"{error} (the newer {_steps(damaged)} {'is' if len(damaged) == 1 else 'are'} damaged, "
                          f"and stayed where {'it was' if len(damaged) == 1 else 'they were'})") from error
        raise error
      damaged.append(error if outcome == _DAMAGED else
                     Damaged(f"checkpoint {self.directory}/{step} is damaged (found by another process)", step,
                             "found by another process"))
    if damaged:
      listing = "; ".join(f"{d.step}: {d.why}" for d in damaged[:4]) + ("; ..." if len(damaged) > 4 else "")
      which = "the only one is damaged" if len(damaged) == 1 else f"all {len(damaged)} are damaged"
      raise UserError(f"no checkpoint in {self.directory} restores: {which} ({listing}); nothing was moved and "
                      f"nothing started afresh; put back intact copies, or start afresh with a new --workdir")
    return None

  def restore(self, step, abstract_state, data_iterator=None):
    """(state, metadata) of checkpoint `step`, and `data_iterator` (if given) moved in place.

    Raises Damaged when the checkpoint is provably incomplete or corrupt, RestoreFailed
    (naming the error and what to do) when it fails otherwise, UserError when it does not
    fit this run's model or optimizer."""
    wanted = _split(abstract_state)
    path = f"{self.directory}/{step}"
    try:
      stored = self._manager.item_metadata(step)
      saved = _shapes({name: stored[name] for name in _ARRAY_ITEMS})
    except Exception as e:  # pylint: disable=broad-except
      if peers.lost_peer(e):
        raise
      raise self._restore_error(step, e) from e
    mismatches = _mismatches(saved, _shapes(wanted))
    if mismatches:
      why = find_damage(path)  # A lost _METADATA reads as a checkpoint without arrays.
      if why:
        raise Damaged(f"checkpoint {path} is damaged ({why})", step, why)
      raise UserError(f"checkpoint {path} does not fit this run's model or optimizer "
                      f"({'; '.join(mismatches[:5])}{'; ...' if len(mismatches) > 5 else ''}); "
                      f"resume with the config it was saved with, or use a new --workdir")
    items = {name: ocp.args.StandardRestore(tree) for name, tree in wanted.items()}
    if data_iterator is not None:
      items["data"] = _DataRestore(data_iterator)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items, metadata=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      if peers.lost_peer(e):
        raise
      raise self._restore_error(step, e) from e
    state = abstract_state.replace(params=restored["params"], opt_state=restored["opt_state"], **restored["rest"])
    return state, restored["metadata"]

  def restore_variables(self, step, abstract_variables):
    """The model's variables ({'params': ..., 'batch_stats': ...}) of checkpoint `step`,
    read without the optimizer state (evaluation builds no optimizer)."""
    model_state = {k: v for k, v in abstract_variables.items() if k != "params"}
    replicated = jax.sharding.NamedSharding(jax.tree.leaves(abstract_variables)[0].sharding.mesh,
                                            jax.sharding.PartitionSpec())
    rest = {"step": jax.ShapeDtypeStruct((), jax.numpy.int32, sharding=replicated),
            "rng": jax.ShapeDtypeStruct((2,), jax.numpy.uint32, sharding=replicated), "model_state": model_state}
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract_variables["params"]), rest=ocp.args.StandardRestore(rest)))
    except Exception as e:  # pylint: disable=broad-except
      if peers.lost_peer(e):
        raise
      failure = self._restore_error(step, e)  # Damage, memory and storage say so, as in `restore`.
      if isinstance(failure, Damaged) or faults.out_of_memory(e) or faults.storage_error(e):
        raise failure from e
      raise UserError(f"cannot read the model of checkpoint {self.directory}/{step} ({_why(e)}); is it from "
                      f"this config's model?") from e
    return {"params": restored["params"], **restored["rest"]["model_state"]}

  def variable_shapes(self, step):
    """{'params/...' or 'batch_stats/...': shape} of the model variables saved at `step`,
    from its metadata alone (fine-tuning matches them by name before reading any)."""
    shapes = {}
    for item in ("params", "rest"):
      path = f"{self.directory}/{step}/{item}"
      try:
        metadata = ocp.StandardCheckpointer().metadata(path).item_metadata
      except Exception as e:  # pylint: disable=broad-except  (any unreadable checkpoint: one line)
        raise UserError(f"cannot read the metadata of {path}: {first_line(e)}") from None
      tree = metadata.tree if hasattr(metadata, "tree") else metadata
      if item == "rest":
        tree = tree.get("model_state", {})
      shapes.update({_variable_name(item, name): tuple(leaf.shape) for name, leaf in paths.named_leaves(tree)})
    return shapes

  def restore_named(self, step, targets):
    """{name: array} of checkpoint `step` for {name: ShapeDtypeStruct with a sharding}, names
    as `variable_shapes` gives them: a partial restore, nothing else read."""
    items = {}  # Checkpoint item ('params' or 'rest') -> the partial tree to restore.
    for name, target in targets.items():
      keys = name.split("/")
      item, keys = ("params", keys[1:]) if keys[0] == "params" else ("rest", ["model_state"] + keys)
      tree = items.setdefault(item, {})
      for key in keys[:-1]:
        tree = tree.setdefault(key, {})
      tree[keys[-1]] = target
    restored = {}
    with ocp.PyTreeCheckpointer() as reader:
      for item, tree in items.items():
        got = reader.restore(f"{self.directory}/{step}/{item}", args=ocp.args.PyTreeRestore(
            item=tree, restore_args=ocp.checkpoint_utils.construct_restore_args(tree), partial_restore=True))
        restored.update({_variable_name(item, name): leaf for name, leaf in paths.named_leaves(got)})
    return restored

  def all_steps(self):
    return sorted(self._manager.all_steps())

  def set_aside_from(self, step):
    """Moves the checkpoints of `step` and later out of the way of a resume (see
    `_move_aside`). Returns the steps moved."""
    with self._disk_full_as_one_line():
      self._manager.wait_until_finished()
    moved = sorted(saved for saved in self._manager.all_steps() if saved >= step)
    self._move_aside(moved)
    return moved

  @property
  def _aside(self):
    return os.path.join(os.path.dirname(self.directory), layout.SET_ASIDE)

  def _move_aside(self, steps):
    """To `checkpoints_set_aside/<step>`: still there to look at, no longer resumed from."""
    if steps and jax.process_index() == 0:
      storage.makedirs(self._aside)
      for step in steps:
        target, n = os.path.join(self._aside, str(step)), 1
        while storage.exists(target):  # Set aside before, by an earlier run.
          target, n = os.path.join(self._aside, f"{step}.{n}"), n + 1
        storage.move(os.path.join(self.directory, str(step)), target, marker="commit_success.txt")
    self._manager.reload()  # Forget the steps it listed.

  def close(self):
    """Waits for a save in flight, then closes. Not while a lost peer process is the
    exception on its way out: Orbax would wait in barriers for the dead process until
    JAX's heartbeat timeout (100 s), and the launcher is about to exit at once anyway
    (see peers.py); the save in flight stays an invisible `*.orbax-checkpoint-tmp`."""
    if peers.lost_peer(sys.exc_info()[1]):
      return
    with self._disk_full_as_one_line():
      self._manager.wait_until_finished()
      self._manager.close()

  def _restore_error(self, step, error):
    """Damaged when the checkpoint's files show it, else RestoreFailed: one line, with the
    error's first line and what to do."""
    path = f"{self.directory}/{step}"
    if not faults.out_of_memory(error):  # Memory is no evidence about the files; reading them all again costs.
      why = find_damage(path)
      if why:
        return Damaged(f"checkpoint {path} is damaged ({why})", step, why)
    cause = faults.innermost(error)
    if faults.out_of_memory(error):
      advice = "there was not enough memory to restore it: free some (other jobs on this machine) and run again"
    elif faults.storage_error(error):
      advice = f"reading it failed: check that {self.directory} is readable (permissions, mount, network) and run again"
    else:
      advice = ("none of its files is missing or undecodable, so it was not set aside: fix the cause and run again "
                "(to resume from an older checkpoint instead, move this one away yourself)")
    return RestoreFailed(f"could not restore checkpoint {path}: {_why(cause).rstrip('.')}; nothing was moved; {advice}")

  def _disk_full_as_one_line(self):
    return faults.DiskFullAsOneLine(self.directory)


class QuietReading(std_logging.Filter):
  """Drops Orbax's warnings about what reading another run's checkpoints implies (the
  directory is read-only, an item has no _CHECKPOINT_METADATA of its own): we asked for
  exactly that, and they are not news to the user. Add it to absl's handler."""

  def filter(self, record):
    return record.levelno >= std_logging.ERROR or "/orbax/" not in record.pathname


_OK, _DAMAGED, _FAILED = 0, 1, 2


def _agree(outcome):
  """The worst outcome over all processes (a collective: every process calls it)."""
  if jax.process_count() == 1:
    return outcome
  return int(np.max(multihost_utils.process_allgather(np.int32(outcome))))


def _steps(damaged):
  steps = [str(d.step) for d in damaged]
  return f"checkpoint {steps[0]}" if len(steps) == 1 else f"checkpoints {', '.join(steps)}"


_ARRAY_ITEMS = faults.ARRAY_ITEMS


@dataclasses.dataclass
class _Pinned:
  """Orbax preservation policy: keeps the checkpoints of `steps`, which may change."""
  steps: set = dataclasses.field(default_factory=set)

  def should_preserve(self, checkpoints, *, context):  # pylint: disable=unused-argument
    return [info.step in self.steps for info in checkpoints]


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
  return {name: f"{leaf.dtype}[{','.join(map(str, leaf.shape))}]" for name, leaf in paths.named_leaves(tree)}


def _variable_name(item, name):
  """'params/Conv_0/kernel' for item 'params'; 'batch_stats/BatchNorm_0/mean' for a
  model_state array of item 'rest' (whose paths start at the collection)."""
  if item == "params":
    return f"params/{name}"
  return name[len("model_state/"):] if name.startswith("model_state/") else name
