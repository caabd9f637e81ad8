"""Opening TFDS datasets as random-access sources (ArrayRecord), without TensorFlow; keeping
only the examples of some classes (`ClassSubset`)."""

import contextlib
import io
import logging as std_logging
import os
import time

from absl import logging
import jax
import numpy as np
import tensorflow_datasets as tfds

from jaxtrain.data import digits  # pylint: disable=unused-import  (registers 'digits' with TFDS)
from jaxtrain.data import stdlib_code  # pylint: disable=unused-import  (registers 'stdlib_code')
from jaxtrain.errors import UserError


def data_dir_for(data_dir):
  """The TFDS data directory: the config's, else $TFDS_DATA_DIR, else TFDS's default."""
  return os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR") or tfds.core.constants.DATA_DIR)


class Source:
  """A split of a TFDS dataset read by batches of indices: `source.read([3, 1, 4])`."""

  def __init__(self, data_source):
    self._data_source = data_source

  def __len__(self):
    return len(self._data_source)

  def read(self, indices):
    examples = self._data_source.__getitems__([int(i) for i in indices])
    return {key: np.stack([e[key] for e in examples]) for key in examples[0]}


class InMemorySource:
  """A split decoded once into stacked arrays; reads are array indexing (microseconds).

  For splits that fit in memory, where decoding each example on every read would cost
  more than the train step itself."""

  def __init__(self, source, chunk=4096):
    parts = [source.read(range(i, min(i + chunk, len(source)))) for i in range(0, len(source), chunk)]
    self.arrays = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

  def __len__(self):
    return len(next(iter(self.arrays.values())))

  def read(self, indices):
    indices = np.asarray(indices, np.int64)
    return {key: value[indices] for key, value in self.arrays.items()}


def open_source(name, split, data_dir=None, cache=False, data_dir_key="input.data.data_dir"):
  """Returns a `Source` for a TFDS `name` and `split`, or an `InMemorySource` if `cache`.

  Builders marked BUILT_LOCALLY are prepared on first use; any other dataset must already
  be prepared in the data directory (nothing is downloaded at run time).
  """
  data_dir = data_dir_for(data_dir)
  try:
    with _without_tfds_noise():
      builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(f"unknown dataset '{name}': TFDS has no builder of that name "
                    f"(looked in the TFDS catalog and jaxtrain.data)") from None
  if getattr(builder, "BUILT_LOCALLY", False):
    with _without_tfds_noise():
      _prepare_locally_built(builder)
      builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")  # Reads what was built.
  elif not builder.is_prepared():
    raise UserError(f"dataset '{name}' is not prepared in {data_dir}; prepare it with "
                    f"`tfds build {name} --data_dir={data_dir} --file_format=array_record` "
                    f"or set {data_dir_key} / $TFDS_DATA_DIR to where it is")
  try:
    builder.info.splits[split]  # pylint: disable=expression-not-assigned
  except (KeyError, ValueError, AssertionError) as e:
    why = f" ({e})" if "[" in split else ""  # Say what is wrong with a slice like 'train[:200%]'.
    raise UserError(f"dataset '{name}' in {data_dir} has no split '{split}'{why}; its splits are "
                    f"{', '.join(builder.info.splits.keys())}") from None
  file_format = tfds.core.FileFormat(builder.info.file_format)
  if file_format != tfds.core.FileFormat.ARRAY_RECORD:
    raise UserError(f"dataset '{name}' in {data_dir} is stored as {file_format.value}, not array_record; "
                    f"rebuild it with --file_format=array_record for random access")
  source = Source(builder.as_data_source(split=split))
  return InMemorySource(source) if cache else source


def _prepare_locally_built(builder):
  """Builds on first use. With several processes, process 0 builds first and all wait for
  it (a shared filesystem then has one copy); a process that still finds nothing (a disk
  of its own) builds its own, identical, copy."""
  tfds.disable_progress_bar()
  if jax.process_count() > 1:
    if jax.process_index() == 0 and not builder.is_prepared():
      _build(builder)
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(f"jaxtrain: prepared {builder.name}")
  if not builder.is_prepared():
    _build(builder)


def _build(builder):
  logging.info("Preparing dataset %s in %s (first use; built here, nothing is downloaded).", builder.name,
               builder.data_dir)
  start = time.perf_counter()
  builder.download_and_prepare()
  splits = ", ".join(f"{name} {info.num_examples:,}" for name, info in builder.info.splits.items())
  logging.info("Prepared %s in %.1f s: %s examples.", builder.name, time.perf_counter() - start, splits)


class _TFDSNoise(std_logging.Filter):
  """TFDS's lines about a dataset being prepared on first use, which read as a download of
  unknown size and a broken folder; `_build` says what happens instead."""

  def filter(self, record):
    return "has no dataset_info.json" not in record.getMessage()


@contextlib.contextmanager
def _without_tfds_noise():
  """Without TFDS's "Downloading and preparing dataset Unknown size ..." (printed to stdout)
  and "Variant folder ... has no dataset_info.json" (a warning) for a dataset built here."""
  noise = _TFDSNoise()
  logger = std_logging.getLogger("absl")
  logger.addFilter(noise)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    logger.removeFilter(noise)


class ClassSubset:
  """The examples of `source` at `indices` (those of the chosen classes), in their order.

  Labels are not renumbered: a model that learns the digits 0-4 keeps num_classes=10, so
  that its head, checkpoints and evaluators mean the same classes whatever the subset."""

  def __init__(self, source, indices):
    self.source, self.indices = source, np.asarray(indices, np.int64)

  def __len__(self):
    return len(self.indices)

  def read(self, indices):
    return self.source.read(self.indices[np.asarray(indices, np.int64)])


def keep_classes(source, classes, key="label", *, name, split, where="input.data.classes",
                 key_where="input.data.class_key"):
  """A `ClassSubset` of the examples whose `key` is one of `classes` (ints). Reads the
  label column once (from memory for a cached source, else the whole split from disk)."""
  labels = _label_column(source, key, name, split, key_where)
  present = np.unique(labels)
  missing = [c for c in classes if c not in present]
  if missing:
    raise UserError(f"config key '{where}': dataset '{name}' split '{split}' has no examples of class "
                    f"{missing[0]}; its '{key}' classes are {_ranges(present)}")
  return ClassSubset(source, np.flatnonzero(np.isin(labels, classes)))


def _label_column(source, key, name, split, key_where, chunk=4096):
  if len(source) == 0:
    raise UserError(f"dataset '{name}' split '{split}' is empty: there are no classes to keep")
  if isinstance(source, InMemorySource):
    first, column = source.arrays, lambda: source.arrays[key]
  else:
    first = source.read([0])
    column = lambda: np.concatenate([source.read(range(i, min(i + chunk, len(source))))[key]
                                     for i in range(0, len(source), chunk)])
  if key not in first:
    raise UserError(f"dataset '{name}' split '{split}' has no feature '{key}' to keep classes by "
                    f"(config key '{key_where}'); its features are {', '.join(sorted(first))}")
  sample = np.asarray(first[key])
  if sample.ndim != 1 or not np.issubdtype(sample.dtype, np.integer):
    raise UserError(f"feature '{key}' of dataset '{name}' split '{split}' holds {sample.dtype} of shape "
                    f"{sample.shape[1:]} per example, not one integer class id (config key '{key_where}')")
  return np.asarray(column())


def _ranges(values):
  """'0-4, 7, 9': sorted integers, runs shortened."""
  parts, start = [], None
  for i, v in enumerate(values):
    start = v if start is None else start
    if i + 1 == len(values) or values[i + 1] != v + 1:
      parts.append(f"{start}-{v}" if v > start else f"{v}")
      start = None
  return ", ".join(parts)
