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
import errno
import json
import logging as std_logging
import math
import os
import re
import shutil
import sys
import traceback
from typing import Any

from absl import logging
import grain
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts

from jaxtrain import config as config_lib
from jaxtrain import peers
from jaxtrain.errors import UserError, first_line


class Damaged(UserError):
  """Checkpoint `step` is incomplete or corrupt: `find_damage` found what is wrong."""

  def __init__(self, message, step, why):
    super().__init__(message)
    self.step, self.why = step, why


class RestoreFailed(UserError):
  """Checkpoint `step` did not restore, and nothing shows it is damaged: the run stops and
  moves nothing (out of memory, the storage failing, a shape Orbax refuses, ...)."""


class DiskFull(UserError):
  """A save ran out of disk space."""


class Checkpointer:

  def __init__(self, workdir, *, every_steps=None, keep=3, keep_best=0, best_metric=None, best_mode="max",
               read_only=False):
    """Keeps the `keep` newest checkpoints and, with `keep_best`, also that many of the best
    by `best_metric` (highest for best_mode 'max', lowest for 'min'). `read_only` opens an
    existing directory to read (evaluation) and changes nothing."""
    self.every_steps = every_steps
    self.best_metric = best_metric if keep_best else None
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    _quiet_orbax_disk_full()
    _quiet_orbax_leftovers()
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
      raise UserError(f"cannot read the model of checkpoint {self.directory}/{step} ({_why(e)}); is it from "
                      f"this config's model?") from e
    return {"params": restored["params"], **restored["rest"]["model_state"]}

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
    return os.path.join(os.path.dirname(self.directory), "checkpoints_set_aside")

  def _move_aside(self, steps):
    """To `checkpoints_set_aside/<step>`: still there to look at, no longer resumed from."""
    if steps and jax.process_index() == 0:
      os.makedirs(self._aside, exist_ok=True)
      for step in steps:
        target, n = os.path.join(self._aside, str(step)), 1
        while os.path.exists(target):  # Set aside before, by an earlier run.
          target, n = os.path.join(self._aside, f"{step}.{n}"), n + 1
        os.rename(os.path.join(self.directory, str(step)), target)
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
    if not _out_of_memory(error):  # Memory is no evidence about the files; reading them all again costs.
      why = find_damage(path)
      if why:
        return Damaged(f"checkpoint {path} is damaged ({why})", step, why)
    cause = _innermost(error)
    if _out_of_memory(error):
      advice = "there was not enough memory to restore it: free some (other jobs on this machine) and run again"
    elif _storage_error(error):
      advice = f"reading it failed: check that {self.directory} is readable (permissions, mount, network) and run again"
    else:
      advice = ("none of its files is missing or undecodable, so it was not set aside: fix the cause and run again "
                "(to resume from an older checkpoint instead, move this one away yourself)")
    return RestoreFailed(f"could not restore checkpoint {path}: {_why(cause)}; nothing was moved; {advice}")

  def _disk_full_as_one_line(self):
    return _DiskFullAsOneLine(self.directory)


class _DiskFullAsOneLine:
  """Turns a save's ENOSPC, wherever Orbax raises it (the save itself, the next save, the
  wait for it, close), into DiskFull: one line naming the directory and the checkpoint a
  new run resumes from."""

  def __init__(self, directory):
    self.directory = directory

  def __enter__(self):
    return self

  def __exit__(self, kind, error, tb):
    if isinstance(error, Exception) and not isinstance(error, DiskFull) and disk_full(error) is not None:
      raise DiskFull(disk_full_message(self.directory, "saving a checkpoint failed")) from error
    return False


def disk_full(error):
  """The ENOSPC error in `error`'s chain (causes and contexts), or None. Orbax raises the
  OSError itself (from its finalize) or tensorstore's `RESOURCE_EXHAUSTED: ... [OS error
  28: No space left on device]` (from the array writes)."""
  for e in peers.chain(error):
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
      return e
    if f"[OS error {errno.ENOSPC}:" in str(e) or os.strerror(errno.ENOSPC) in str(e):
      return e
  return None


def disk_full_message(directory, what, checkpoints=None):
  """'the disk holding DIR is full (...): WHAT; free space ... resume from checkpoint N'."""
  checkpoints = checkpoints or directory
  try:
    usage = shutil.disk_usage(directory)
    space = f"{_size(usage.free)} free of {_size(usage.total)}"
  except OSError:
    space = "No space left on device"
  newest = newest_complete_step(checkpoints)
  again = ("run the same command again to start over (no checkpoint was complete yet)" if newest is None else
           f"run the same command again to resume from checkpoint {newest}")
  return (f"the disk holding {directory} is full ({space}): {what}; free space there (or lower "
          f"checkpoint.keep) and {again}")


def newest_complete_step(directory):
  """The newest step in `directory` (a checkpoints/ directory) that Orbax finalized, or
  None: a save in progress or cut short is `<step>.orbax-checkpoint-tmp-*`, not a number."""
  try:
    steps = [int(name) for name in os.listdir(directory) if name.isdigit()]
  except OSError:
    return None
  return max(steps, default=None)


def find_damage(path):
  """What is provably wrong with checkpoint directory `path`, or None.

  Reads it directly rather than judging Orbax's exception: every file must read at the OS
  level (if one does not, e.g. EIO or EACCES, the storage is failing, which is no evidence
  about the checkpoint: None); every item must be there; the JSON files must parse; every
  array must read back through tensorstore. What a damaged checkpoint gave there (jax
  0.10.2, orbax 0.12.8, tensorstore 0.1.86), by the code tensorstore puts first:
    data files truncated     OUT_OF_RANGE: ... Requested byte range [0, 1243) is not valid for value of size 10
    data files zeroed        FAILED_PRECONDITION: ... ZSTD_decompressStream() failed: Unknown frame descriptor
    data files deleted       FAILED_PRECONDITION: ... Truncated Zstd-compressed stream
    manifest.ocdbt deleted   NOT_FOUND: Error opening "zarr" driver: Metadata at "Dense_0.bias/.zarray" ... does not exist
    manifest.ocdbt truncated DATA_LOSS: ... Error decoding manifest
  Those codes count as damage; an OS error inside tensorstore's message (`[OS error N: ...]`,
  other than ENOENT) or any other code does not. (A byte flipped inside compressed data
  can pass unnoticed: zarr chunks carry no checksum; Orbax then restores it too.)"""
  if not os.path.isdir(path):
    return "its directory is gone"
  storage_failed = _read_every_file(path)
  if storage_failed:
    return None
  for item in _ARRAY_ITEMS + ("data", "metadata"):
    if not os.path.isdir(os.path.join(path, item)):
      return f"its {item}/ is missing"
  why = _check_json(os.path.join(path, "metadata", "metadata"), "metadata/metadata")
  positions = [name for name in os.listdir(os.path.join(path, "data")) if name.endswith(".json")]
  if why is None and not positions:
    why = "data/ has no iterator position (process_*.json)"
  for name in sorted(positions):
    why = why or _check_json(os.path.join(path, "data", name), f"data/{name}")
  for item in _ARRAY_ITEMS:
    why = why or _array_item_damage(os.path.join(path, item), item)
  return why


def _read_every_file(path):
  """The OS error (other than a vanished file) reading any file under `path`, or None."""
  for root, _, names in os.walk(path):
    for name in names:
      try:
        with open(os.path.join(root, name), "rb") as f:
          while f.read(16 << 20):
            pass
      except FileNotFoundError:
        continue
      except OSError as e:
        return e
  return None


def _check_json(file, name):
  if not os.path.isfile(file):
    return f"{name} is missing"
  try:
    with open(file, encoding="utf-8") as f:
      json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    return f"{name} is not valid JSON ({first_line(e, 80)})"
  return None


_DAMAGE_CODES = ("DATA_LOSS", "OUT_OF_RANGE", "FAILED_PRECONDITION", "NOT_FOUND")


def _array_item_damage(directory, item):
  """Orbax's array item (`_METADATA` and, with OCDBT, a tensorstore key-value database):
  every array it lists must be there and read back whole (one slab of at most 256 MiB at a
  time, so checking needs little memory)."""
  why = _check_json(os.path.join(directory, "_METADATA"), f"{item}/_METADATA")
  if why:
    return why
  with open(os.path.join(directory, "_METADATA"), encoding="utf-8") as f:
    metadata = json.load(f)
  zarr3 = bool(metadata.get("use_zarr3"))
  kvstore = {"driver": "file", "path": directory + "/"}
  if metadata.get("use_ocdbt", True):
    if not os.path.isfile(os.path.join(directory, "manifest.ocdbt")):
      return f"{item}/manifest.ocdbt is missing"
    kvstore = {"driver": "ocdbt", "base": kvstore}
  listed = sorted(".".join(str(k["key"]) for k in entry["key_metadata"])
                  for entry in metadata.get("tree_metadata", {}).values()
                  if not entry.get("value_metadata", {}).get("skip_deserialize", False))
  name = None
  try:
    context = ts.Context()  # Fresh: nothing cached from Orbax's attempt.
    keys = ts.KvStore.open(kvstore, context=context).result().list().result()
    marker = "/zarr.json" if zarr3 else "/.zarray"
    present = {key.decode()[:-len(marker)] for key in keys if key.decode().endswith(marker)}
    missing = [name for name in listed if name not in present]
    if missing:
      return f"{item}: array {missing[0]} is missing" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
    for name in listed:
      array = ts.open({"driver": "zarr3" if zarr3 else "zarr", "kvstore": {**kvstore, "path": name + "/"}},
                      open=True, read=True, context=context).result()
      if not array.shape:
        array.read().result()
        continue
      row_bytes = array.dtype.numpy_dtype.itemsize * math.prod(array.shape[1:])
      rows = max(1, (256 << 20) // max(1, row_bytes))
      for start in range(0, array.shape[0], rows):
        array[start:min(start + rows, array.shape[0])].read().result()  # tensorstore does not clip.
  except Exception as e:  # pylint: disable=broad-except  (tensorstore raises ValueError with the status text)
    text = str(e)
    code = text.split(":", 1)[0].strip()
    os_error = "[OS error " in text and f"[OS error {errno.ENOENT}:" not in text
    if code in _DAMAGE_CODES and not os_error:
      return f"{item}{f', array {name}' if name else ''}: {_short(text, directory)}"
    return None  # The storage, or memory: no evidence about the checkpoint.
  return None


def _short(text, directory):
  """tensorstore's first line without the paths and specs it repeats: 'OUT_OF_RANGE: Error
  reading "Dense_0.kernel/0.0": Requested byte range [0, 1243) is not valid for value of size 10'."""
  line = first_line(text, 2000)
  line = re.sub(r' in OCDBT database at local file "[^"]*"', "", line)
  line = line.replace(f"local file \"{directory}/", "\"").split(" [tensorstore_spec=")[0].split(" [source locations=")[0]
  return line[:200]


_OK, _DAMAGED, _FAILED = 0, 1, 2


def _agree(outcome):
  """The worst outcome over all processes (a collective: every process calls it)."""
  if jax.process_count() == 1:
    return outcome
  return int(np.max(multihost_utils.process_allgather(np.int32(outcome))))


def _steps(damaged):
  steps = [str(d.step) for d in damaged]
  return f"checkpoint {steps[0]}" if len(steps) == 1 else f"checkpoints {', '.join(steps)}"


def _out_of_memory(error):
  return any(isinstance(e, MemoryError) or "RESOURCE_EXHAUSTED" in str(e) or "Out of memory" in str(e)
             for e in peers.chain(error))


def _storage_error(error):
  return any(isinstance(e, OSError) or "[OS error " in str(e) or str(e).startswith(
      ("UNAVAILABLE", "DEADLINE_EXCEEDED", "PERMISSION_DENIED")) for e in peers.chain(error))


def _innermost(error):
  """The first error in the chain that says more than Orbax's wrapper ('Encountered error
  while reading array index ...'): the error raised first."""
  seen = [error]
  while (error.__cause__ or error.__context__) is not None and not any(
      (error.__cause__ or error.__context__) is s for s in seen):
    error = error.__cause__ or error.__context__
    seen.append(error)
  return error


def _size(n):
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if n < 1024 or unit == "TiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  return str(n)


class _QuietDiskFull(std_logging.Filter):
  """Drops Orbax's own logged tracebacks of a save that ran out of disk space: its save
  and finalize threads each log the ENOSPC with a traceback (about 450 lines in all for
  one full disk, measured on a 7 MB tmpfs), and the same failure reaches the user as one
  DiskFull line. Other errors, and Orbax's records without ENOSPC, pass."""

  def filter(self, record):
    error = record.exc_info[1] if record.exc_info else None
    return not (error is not None and "/orbax/" in record.pathname and disk_full(error) is not None)


def _quiet_orbax_leftovers():
  """A failed Orbax restore or save leaves its other tensorstore operations behind: as
  coroutines that, when Python collects them later, each print 'Exception ignored in:
  <coroutine object _read_array_index_and_device_put ...>' and a 60-line tensorstore spec,
  and as reads and writes that complete after Orbax closed their event loop, each printing
  'RuntimeError: Event loop is closed' from asyncio's call_soon_threadsafe (6 lines; 0 to 3
  after a damaged checkpoint's restore, 16 after a save on a full disk: measured). They are
  the failure that `restore` or `save` reports in one line; those, and only those, are
  dropped (Python reports them through sys.unraisablehook, never as exceptions)."""
  previous = sys.unraisablehook
  if getattr(previous, "quiets_orbax_leftovers", False):
    return

  def hook(unraisable):
    code = getattr(unraisable.object, "cr_code", None)
    leftover_read = (code is not None and "/orbax/" in code.co_filename
                     and "Encountered error while reading array index" in str(unraisable.exc_value))
    frames = traceback.extract_tb(unraisable.exc_traceback) if unraisable.exc_traceback else []
    late_callback = (unraisable.object is None and isinstance(unraisable.exc_value, RuntimeError)
                     and str(unraisable.exc_value) == "Event loop is closed"
                     and any(f.name == "call_soon_threadsafe" for f in frames))
    if not (leftover_read or late_callback):
      previous(unraisable)

  hook.quiets_orbax_leftovers = True
  sys.unraisablehook = hook


def _quiet_orbax_disk_full():
  absl_logger = std_logging.getLogger("absl")  # Where absl.logging (and so Orbax) logs.
  if not any(isinstance(f, _QuietDiskFull) for f in absl_logger.filters):
    absl_logger.addFilter(_QuietDiskFull())


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
