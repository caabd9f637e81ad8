"""What can go wrong with a checkpoint, told apart: damage, other restore failures, a full disk.

A checkpoint is called damaged only on evidence found by reading its files directly
(`find_damage`); out of memory, a failing storage or a timeout are not evidence about the
files. A save that runs out of space is one line (`DiskFull`) naming the directory and the
checkpoint a new run resumes from, and the tracebacks Orbax's threads log for the same
failure are dropped.
"""

import errno
import json
import logging as std_logging
import math
import os
import re
import sys
import traceback

import tensorstore as ts

from jaxtrain.errors import UserError, chain, first_line
from jaxtrain.rundir import disk
from jaxtrain.rundir import storage

ARRAY_ITEMS = ("params", "opt_state", "rest")  # The array items of a saved step (see checkpoint.py).


class Damaged(UserError):
  """Checkpoint `step` is incomplete or corrupt: `find_damage` found what is wrong."""

  def __init__(self, message, step, why):
    super().__init__(message)
    self.step, self.why = step, why


class RestoreFailed(UserError):
  """Checkpoint `step` did not restore, and nothing shows it is damaged: the run stops and
  moves nothing (out of memory, the storage failing, a shape Orbax refuses, ...)."""


class DiskFullAsOneLine:
  """Turns a save's ENOSPC, wherever Orbax raises it (the save itself, the next save, the
  wait for it, close), into DiskFull: one line naming the directory and the checkpoint a
  new run resumes from."""

  def __init__(self, directory):
    self.directory = directory

  def __enter__(self):
    return self

  def __exit__(self, kind, error, tb):
    if isinstance(error, Exception) and not isinstance(error, disk.DiskFull) and disk.full(error) is not None:
      raise disk.DiskFull(disk.message(self.directory, "saving a checkpoint failed",
                                       os.path.dirname(self.directory))) from error
    return False


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
  if not storage.isdir(path):
    return "its directory is gone"
  # An object is whole or absent, and its reads fail for no reason a disk's do (EIO): the
  # checks below read what they need.
  if not storage.is_gcs(path) and _read_every_file(path):
    return None
  for item in ARRAY_ITEMS + ("data", "metadata"):
    if not storage.isdir(os.path.join(path, item)):
      return f"its {item}/ is missing"
  why = _check_json(os.path.join(path, "metadata", "metadata"), "metadata/metadata")
  positions = [name for name in storage.listdir(os.path.join(path, "data")) if name.endswith(".json")]
  if why is None and not positions:
    why = "data/ has no iterator position (process_*.json)"
  for name in sorted(positions):
    why = why or _check_json(os.path.join(path, "data", name), f"data/{name}")
  for item in ARRAY_ITEMS:
    why = why or _array_item_damage(os.path.join(path, item), item)
  return why


def _read_every_file(path):
  """The OS error (other than a vanished file) reading any file under `path`, or None."""
  for file in storage.files_under(path):
    try:
      with storage.open_file(file, "rb") as f:
        while f.read(16 << 20):
          pass
    except FileNotFoundError:
      continue
    except OSError as e:
      return e
  return None


def _check_json(file, name):
  if not storage.isfile(file):
    return f"{name} is missing"
  try:
    with storage.open_file(file) as f:
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
  metadata = json.loads(storage.read_text(os.path.join(directory, "_METADATA")))
  zarr3 = bool(metadata.get("use_zarr3"))
  kvstore = {"driver": "file", "path": directory + "/"}
  if storage.is_gcs(directory):
    bucket, key = storage.bucket_of(directory)
    kvstore = {"driver": "gcs", "bucket": bucket, "path": key + "/"}
  if metadata.get("use_ocdbt", True):
    if not storage.isfile(os.path.join(directory, "manifest.ocdbt")):
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
  line = line.replace(f"local file \"{directory}/", "\"")
  line = line.split(" [tensorstore_spec=")[0].split(" [source locations=")[0]
  return line[:200]


def out_of_memory(error):
  return any(isinstance(e, MemoryError) or "RESOURCE_EXHAUSTED" in str(e) or "Out of memory" in str(e)
             for e in chain(error))


def storage_error(error):
  return any(isinstance(e, OSError) or "[OS error " in str(e) or str(e).startswith(
      ("UNAVAILABLE", "DEADLINE_EXCEEDED", "PERMISSION_DENIED")) for e in chain(error))


def innermost(error):
  """The first error in the chain that says more than Orbax's wrapper ('Encountered error
  while reading array index ...'): the error raised first."""
  seen = [error]
  while (error.__cause__ or error.__context__) is not None and not any(
      (error.__cause__ or error.__context__) is s for s in seen):
    error = error.__cause__ or error.__context__
    seen.append(error)
  return error


class _QuietDiskFull(std_logging.Filter):
  """Drops Orbax's own logged tracebacks of a save that ran out of disk space: its save
  and finalize threads each log the ENOSPC with a traceback (about 450 lines in all for
  one full disk, measured on a 7 MB tmpfs), and the same failure reaches the user as one
  DiskFull line. Other errors, and Orbax's records without ENOSPC, pass."""

  def filter(self, record):
    error = record.exc_info[1] if record.exc_info else None
    return not (error is not None and "/orbax/" in record.pathname and disk.full(error) is not None)


def _orbax_read_failure(error):
  return (error is not None and "Encountered error while reading array index" in str(error)
          and any("/orbax/" in f.filename for f in traceback.extract_tb(error.__traceback__)))


class _QuietLeftoverTasks(std_logging.Filter):
  """Drops asyncio's 'Task exception was never retrieved' for Orbax's array reads (see
  quiet_orbax_leftovers)."""

  def filter(self, record):
    error = record.exc_info[1] if record.exc_info else None
    return not (str(record.msg).startswith("Task exception was never retrieved") and _orbax_read_failure(error))


def quiet_orbax_leftovers():
  """A failed Orbax restore or save leaves its other tensorstore operations behind: as
  coroutines that, when Python collects them later, each print 'Exception ignored in:
  <coroutine object _read_array_index_and_device_put ...>' and a 60-line tensorstore spec;
  as tasks whose failure asyncio logs when they are collected ('Task exception was never
  retrieved', the same spec and a traceback: seen once in CI, in one of many damaged
  restores); and as reads and writes that complete after Orbax closed their event loop, each
  printing 'RuntimeError: Event loop is closed' from asyncio's call_soon_threadsafe (6 lines;
  0 to 3 after a damaged checkpoint's restore, 16 after a save on a full disk: measured).
  They are the failure that `restore` or `save` reports in one line; those, and only those,
  are dropped (Python reports them through sys.unraisablehook and the asyncio logger, never
  as exceptions)."""
  asyncio_logger = std_logging.getLogger("asyncio")
  if not any(isinstance(f, _QuietLeftoverTasks) for f in asyncio_logger.filters):
    asyncio_logger.addFilter(_QuietLeftoverTasks())
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


def quiet_orbax_disk_full():
  absl_logger = std_logging.getLogger("absl")  # Where absl.logging (and so Orbax) logs.
  if not any(isinstance(f, _QuietDiskFull) for f in absl_logger.filters):
    absl_logger.addFilter(_QuietDiskFull())
