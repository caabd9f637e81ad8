"""Opening TFDS datasets as random-access sources (ArrayRecord), without TensorFlow."""

import os

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
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(f"unknown dataset '{name}': TFDS has no builder of that name "
                    f"(looked in the TFDS catalog and jaxtrain.data)") from None
  if getattr(builder, "BUILT_LOCALLY", False):
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
  logging.info("Preparing dataset %s in %s (first use).", builder.name, builder.data_dir)
  builder.download_and_prepare()
