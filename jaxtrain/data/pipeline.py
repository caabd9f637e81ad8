"""Grain pipelines: training batches (shuffled, repeated) and evaluation batches (padded).

Each Grain element is a whole batch: indices are computed with numpy, read in one call
and preprocessed with vectorised ops. Per-example work in Python would cost more than a
small model's train step. Grain runs batches ahead on threads and makes the iterator
checkpointable (its state is the index of the next batch).

Both return per-process numpy batches; making global `jax.Array`s is the Strategy's job.
"""

import functools
import math
import sys

import grain
import numpy as np

from jaxtrain.data.ops import BatchRng
from jaxtrain.errors import UserError

MASK = "_mask"
# The first word of every numpy seed, so that the streams can never coincide.
_PERMUTATION, _AUGMENTATION, _EVAL_AUGMENTATION = 0, 1, 2


def train_dataset(source, *, preprocess, global_batch_size, seed, process_index=0, process_count=1):
  """This process's share of an endless stream of global batches.

  Each epoch is a fresh seeded permutation, cut into global batches with the remainder
  dropped. Every global batch is the same whatever the number of processes: process p
  takes the p-th contiguous slice of it, and random augmentation is drawn for the whole
  global batch before slicing. A mixture (data.mixture) orders its examples itself, as
  a closed-form function of their place in the stream; epochs and slicing are the same.
  """
  _check_divides(global_batch_size, process_count)
  num_examples = len(source)
  batches_per_epoch = num_examples // global_batch_size
  if batches_per_epoch == 0:
    what = getattr(source, "epoch_description", f"the {num_examples} training examples")
    raise UserError(f"input.batch_size={global_batch_size} is larger than {what}; use a smaller batch size")
  # A mixture orders its own examples: slot j of its stream is fixed by j (see data.mixture).
  ordered = hasattr(source, "read_positions")
  local = global_batch_size // process_count
  start = process_index * local

  @functools.lru_cache(maxsize=2)
  def permutation(epoch):
    return np.random.default_rng([_PERMUTATION, seed, epoch]).permutation(num_examples)

  def make_batch(k):
    if ordered:
      batch = source.read_positions(k * global_batch_size + start + np.arange(local), seed)
    else:
      epoch, b = divmod(k, batches_per_epoch)
      first = b * global_batch_size + start
      batch = source.read(permutation(epoch)[first:first + local])
    return preprocess(batch, BatchRng([_AUGMENTATION, seed, k], global_batch_size, start, local))

  return grain.MapDataset.range(sys.maxsize).map(make_batch)


def iterate(ds, *, num_threads, prefetch):
  """A checkpointable iterator that prepares `prefetch` batches ahead on `num_threads`."""
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  return iter(ds.to_iter_dataset(options))


def eval_batches(source, *, preprocess, global_batch_size, process_index=0, process_count=1):
  """Every example exactly once, in padded batches carrying a `_mask` (1 real, 0 padding),
  as a Grain MapDataset: index it, iterate it, or `.to_iter_dataset()` it to read ahead.

  Process p reads examples p, p+P, ...; all processes yield the same number of batches
  (collectives need it), the ones whose share runs out first yielding padding only.
  """
  _check_divides(global_batch_size, process_count)
  num_examples = len(source)
  if num_examples < process_count:
    raise UserError(f"an evaluation split of {num_examples} examples cannot be shared by {process_count} processes")
  local = global_batch_size // process_count
  mine = np.arange(process_index, num_examples, process_count)
  num_batches = math.ceil(math.ceil(num_examples / process_count) / local)

  def make_batch(k):
    indices = mine[k * local:(k + 1) * local]
    real = len(indices)
    # A share that has run out re-reads one example and masks it out.
    rng = BatchRng([_EVAL_AUGMENTATION, 0, k], local, 0, max(real, 1))
    batch = preprocess(source.read(indices if real else mine[:1]), rng)
    batch[MASK] = np.ones(max(real, 1), np.float32) * (real > 0)
    return {key: _pad(value, local) for key, value in batch.items()}

  return grain.MapDataset.range(num_batches).map(make_batch)


def _check_divides(global_batch_size, process_count):
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise UserError(f"a global batch of {global_batch_size} cannot be shared evenly by {process_count} processes")


def _pad(array, size):
  return np.concatenate([array, np.zeros((size - len(array),) + array.shape[1:], array.dtype)])
