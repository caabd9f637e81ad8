"""Tests for jaxtrain.data: TFDS sources, preprocessing ops and Grain pipelines."""

import socket

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxtrain.data import open_source
from jaxtrain.data import ops
from jaxtrain.data.ops import BatchRng
from jaxtrain.data import pipeline
from jaxtrain.data import sources
from jaxtrain.errors import UserError

PP_EVAL = "value_range(-1, 1)|onehot(10, key='label', key_result='labels')|keep('image', 'labels')"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A TFDS data dir in which the digits dataset is built once for the whole session."""
  path = str(tmp_path_factory.mktemp("tfds"))
  open_source("digits", "train", data_dir=path)  # Builds both splits.
  return path


@pytest.fixture(scope="session")
def digits_train(data_dir):
  return open_source("digits", "train", data_dir=data_dir, cache=True)


@pytest.fixture
def no_network(monkeypatch):
  """Any attempt to reach the network, or to download and prepare a dataset, fails the test."""

  def fail(*args, **kwargs):
    raise AssertionError(f"network or download attempted: {args} {kwargs}")

  monkeypatch.setattr(socket.socket, "connect", fail)
  monkeypatch.setattr(socket, "getaddrinfo", fail)
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fail)


class IndexSource:
  """A fake source whose 'label' is the example index; images are distinct per example."""

  def __init__(self, num_examples):
    self.num_examples = num_examples

  def __len__(self):
    return self.num_examples

  def read(self, indices):
    indices = np.asarray(indices, np.int64)
    images = (np.arange(64).reshape(1, 8, 8, 1) + 3 * indices[:, None, None, None]) % 256
    return {"image": images.astype(np.uint8), "label": indices}


def identity(batch, rng):
  del rng
  return batch


# ---------------------------------------------------------------------------------------
# open_source.
# ---------------------------------------------------------------------------------------


def test_digits_split_sizes(data_dir):
  train = open_source("digits", "train", data_dir=data_dir)
  test = open_source("digits", "test", data_dir=data_dir)
  assert len(train) == 1438
  assert len(test) == 359
  assert len(train) + len(test) == 1797


def test_digits_examples_have_image_and_label(data_dir):
  batch = open_source("digits", "test", data_dir=data_dir).read([0, 5, 358])
  assert sorted(batch) == ["image", "label"]
  assert batch["image"].shape == (3, 8, 8, 1)
  assert batch["image"].dtype == np.uint8
  assert batch["image"].max() <= 255
  assert batch["label"].shape == (3,)
  assert all(0 <= label < 10 for label in batch["label"])


def test_digits_splits_partition_sklearn_digits(data_dir):
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  digits = load_digits()
  images = np.round(digits.images * (255 / 16)).astype(np.uint8)
  expected = sorted((image.tobytes(), int(label)) for image, label in zip(images, digits.target))
  got = []
  for split, size in [("train", 1438), ("test", 359)]:
    batch = open_source("digits", split, data_dir=data_dir).read(range(size))
    got += [(image.tobytes(), int(label)) for image, label in zip(batch["image"], batch["label"])]
  assert sorted(got) == expected


def test_digits_second_open_reads_same_arrays(data_dir):
  first = open_source("digits", "train", data_dir=data_dir).read(range(1438))
  second = open_source("digits", "train", data_dir=data_dir).read(range(1438))
  np.testing.assert_array_equal(first["image"], second["image"])
  np.testing.assert_array_equal(first["label"], second["label"])


def test_cached_source_reads_like_uncached(data_dir):
  uncached = open_source("digits", "train", data_dir=data_dir)
  cached = open_source("digits", "train", data_dir=data_dir, cache=True)
  assert isinstance(uncached, sources.Source)
  assert isinstance(cached, sources.InMemorySource)
  assert len(cached) == 1438
  indices = [5, 0, 1437, 5, 700]
  expected = uncached.read(indices)
  got = cached.read(indices)
  assert sorted(got) == sorted(expected)
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key])
    assert got[key].dtype == expected[key].dtype


def test_in_memory_source_chunks_join_up(data_dir):
  uncached = open_source("digits", "test", data_dir=data_dir)
  cached = sources.InMemorySource(uncached, chunk=100)  # 359 = 3 full chunks and a part.
  assert len(cached) == 359
  np.testing.assert_array_equal(cached.arrays["label"], uncached.read(range(359))["label"])


def test_tfds_data_dir_env_is_used_without_data_dir(data_dir, monkeypatch, no_network):
  del no_network
  monkeypatch.setenv("TFDS_DATA_DIR", data_dir)
  monkeypatch.setattr(sources, "_build", lambda builder: pytest.fail("rebuilt instead of using $TFDS_DATA_DIR"))
  assert sources.data_dir_for(None) == data_dir
  assert len(open_source("digits", "test")) == 359


def test_explicit_data_dir_wins_over_env(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "env"))
  assert sources.data_dir_for(str(tmp_path / "explicit")) == str(tmp_path / "explicit")


def test_unknown_dataset_raises(data_dir):
  with pytest.raises(UserError, match="unknown dataset 'no_such_dataset_xyz'"):
    open_source("no_such_dataset_xyz", "train", data_dir=data_dir)


def test_unknown_split_raises_listing_splits(data_dir):
  with pytest.raises(UserError) as e:
    open_source("digits", "validation", data_dir=data_dir)
  assert str(e.value) == f"dataset 'digits' in {data_dir} has no split 'validation'; its splits are train, test"


def test_split_slice_is_accepted(data_dir):
  assert len(open_source("digits", "train[:10]", data_dir=data_dir)) == 10


def test_unprepared_catalog_dataset_raises_without_download(tmp_path, no_network):
  del no_network
  with pytest.raises(UserError) as e:
    open_source("mnist", "train", data_dir=str(tmp_path))
  message = str(e.value)
  assert "dataset 'mnist' is not prepared in" in message
  assert str(tmp_path) in message
  assert "tfds build mnist" in message
  assert list(tmp_path.iterdir()) == []  # Nothing was downloaded or written.


# ---------------------------------------------------------------------------------------
# Preprocessing ops.
# ---------------------------------------------------------------------------------------


def test_parse_eval_pipeline_values_and_shapes(digits_train):
  batch = digits_train.read(range(16))
  out = ops.parse(PP_EVAL)(batch, BatchRng(0, 16, 0, 16))
  assert sorted(out) == ["image", "labels"]
  assert out["image"].shape == (16, 8, 8, 1)
  assert out["image"].dtype == np.float32
  np.testing.assert_allclose(out["image"], batch["image"] / 255.0 * 2 - 1, atol=1e-6)
  assert out["image"].min() >= -1.0
  assert out["image"].max() <= 1.0
  assert out["labels"].shape == (16, 10)
  np.testing.assert_array_equal(out["labels"].sum(axis=1), np.ones(16))
  np.testing.assert_array_equal(out["labels"].argmax(axis=1), batch["label"])


def test_parse_does_not_modify_input_batch(digits_train):
  batch = digits_train.read(range(4))
  ops.parse(PP_EVAL)(batch, BatchRng(0, 4, 0, 4))
  assert sorted(batch) == ["image", "label"]
  assert batch["image"].dtype == np.uint8


def test_parse_empty_pipeline_is_identity():
  batch = {"label": np.arange(3)}
  assert ops.parse("")(batch, None)["label"].tolist() == [0, 1, 2]


def test_value_range_with_input_range():
  fn = ops.OPS.get("value_range")(0, 1, in_min=0, in_max=16).fn
  out = fn({"image": np.array([0, 8, 16])})
  np.testing.assert_allclose(out["image"], [0.0, 0.5, 1.0])


def test_onehot_out_of_range_label_raises():
  fn = ops.parse("onehot(3)")
  with pytest.raises(UserError, match=r"input.pp: op 'onehot\(3\)' failed on a batch with keys label: "
                                     r"ValueError: a label of 'label' is outside onehot\(3\): 0..3"):
    fn({"label": np.array([0, 3])}, None)


def test_rename():
  out = ops.parse("rename(labels='label')")({"label": np.arange(2)}, None)
  assert sorted(out) == ["labels"]


def test_keep_missing_key_raises():
  with pytest.raises(UserError, match="the batch has no"):
    ops.parse("keep('labels')")({"label": np.arange(2)}, None)


def test_random_shift_keeps_shape_and_dtype():
  batch = IndexSource(100).read(range(16))
  out = ops.parse("random_shift(1)")(batch, BatchRng(0, 16, 0, 16))
  assert out["image"].shape == (16, 8, 8, 1)
  assert out["image"].dtype == np.uint8


def test_random_shift_is_a_shift_by_at_most_max_shift():
  images = IndexSource(100).read(range(32))["image"] + 1  # No zeros: padding is visible.
  out = ops.parse("random_shift(2)")({"image": images}, BatchRng(7, 32, 0, 32))["image"]
  padded = np.pad(images, [(0, 0), (2, 2), (2, 2), (0, 0)])
  shifts = []
  for i in range(32):
    matches = [(dy, dx) for dy in range(5) for dx in range(5)
               if np.array_equal(out[i], padded[i, dy:dy + 8, dx:dx + 8])]
    assert matches, f"image {i} is not a shift of its input"
    shifts.append(matches[0])
  assert len(set(shifts)) > 5  # Shifts vary across the batch.


def test_random_shift_same_seed_same_result():
  batch = IndexSource(100).read(range(16))
  a = ops.parse("random_shift(1)")(batch, BatchRng(3, 16, 0, 16))
  b = ops.parse("random_shift(1)")(batch, BatchRng(3, 16, 0, 16))
  np.testing.assert_array_equal(a["image"], b["image"])


def test_random_shift_other_seed_other_result():
  batch = IndexSource(100).read(range(16))
  a = ops.parse("random_shift(1)")(batch, BatchRng(3, 16, 0, 16))
  b = ops.parse("random_shift(1)")(batch, BatchRng(4, 16, 0, 16))
  assert not np.array_equal(a["image"], b["image"])


def test_random_flip_lr_flips_some_images():
  images = IndexSource(100).read(range(32))["image"]
  out = ops.parse("random_flip_lr")({"image": images}, BatchRng(0, 32, 0, 32))["image"]
  assert out.shape == images.shape
  flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
  kept = [np.array_equal(o, i) for o, i in zip(out, images)]
  assert all(f or k for f, k in zip(flipped, kept))
  assert 0 < sum(flipped) < 32


def test_random_flip_lr_deterministic_per_seed():
  images = IndexSource(100).read(range(32))["image"]
  flip = ops.parse("random_flip_lr")
  a = flip({"image": images}, BatchRng(1, 32, 0, 32))["image"]
  b = flip({"image": images}, BatchRng(1, 32, 0, 32))["image"]
  c = flip({"image": images}, BatchRng(2, 32, 0, 32))["image"]
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_batch_rng_slices_concatenate_to_global_draws():
  whole = BatchRng([5, 1], 12, 0, 12)
  parts = [BatchRng([5, 1], 12, 0, 4), BatchRng([5, 1], 12, 4, 4), BatchRng([5, 1], 12, 8, 4)]
  np.testing.assert_array_equal(np.concatenate([p.integers(0, 100, (2,)) for p in parts]),
                                whole.integers(0, 100, (2,)))
  # A second draw from each stays consistent too.
  np.testing.assert_array_equal(np.concatenate([p.uniform() for p in parts]), whole.uniform())


def test_batch_rng_draw_shapes():
  rng = BatchRng(0, 12, 4, 4)
  assert rng.integers(0, 3, (2,)).shape == (4, 2)
  assert rng.uniform().shape == (4,)


def test_random_ops_on_process_slices_match_global_batch():
  batch = IndexSource(100).read(range(8))
  pp = ops.parse("random_shift(1)|random_flip_lr")
  whole = pp(batch, BatchRng([0, 3], 8, 0, 8))["image"]
  first = pp({"image": batch["image"][:4]}, BatchRng([0, 3], 8, 0, 4))["image"]
  second = pp({"image": batch["image"][4:]}, BatchRng([0, 3], 8, 4, 4))["image"]
  np.testing.assert_array_equal(np.concatenate([first, second]), whole)


def test_unknown_op_raises_with_suggestion():
  with pytest.raises(UserError) as e:
    ops.parse("value_range(-1, 1)|onehott(10)")
  assert "unknown preprocessing op 'onehott'" in str(e.value)
  assert "(did you mean 'onehot'?)" in str(e.value)


@pytest.mark.parametrize("spec", ["value_range(-1,", "value_range(x, 1)", "keep('a') + 1", "(1)"])
def test_unparseable_op_raises(spec):
  with pytest.raises(UserError, match="cannot parse preprocessing op"):
    ops.parse(spec)


@pytest.mark.parametrize("spec", ["onehot(10, bogus=1)", "value_range()", "random_flip_lr(1, 2)"])
def test_bad_op_arguments_raise(spec):
  with pytest.raises(UserError) as e:
    ops.parse(spec)
  assert f"bad arguments to preprocessing op '{spec}'" in str(e.value)


def test_op_by_module_path_as_the_error_suggests():
  fn = ops.parse("jaxtrain.data.ops:keep('label')")
  assert sorted(fn({"label": np.arange(2), "image": np.zeros(2)}, None)) == ["label"]


# ---------------------------------------------------------------------------------------
# pipeline.train_dataset.
# ---------------------------------------------------------------------------------------

NUM_TRAIN = 1438
BATCH = 100
BATCHES_PER_EPOCH = NUM_TRAIN // BATCH  # 14, dropping 38 examples an epoch.


def train_labels(ds, batches):
  return np.concatenate([ds[k]["label"] for k in batches])


def test_train_batches_have_batch_size():
  ds = pipeline.train_dataset(IndexSource(NUM_TRAIN), preprocess=identity, global_batch_size=BATCH, seed=0)
  batch = ds[0]
  assert batch["label"].shape == (BATCH,)
  assert batch["image"].shape == (BATCH, 8, 8, 1)


def test_train_same_seed_same_batches():
  a = pipeline.train_dataset(IndexSource(NUM_TRAIN), preprocess=identity, global_batch_size=BATCH, seed=1)
  b = pipeline.train_dataset(IndexSource(NUM_TRAIN), preprocess=identity, global_batch_size=BATCH, seed=1)
  for k in [0, 1, 20]:
    np.testing.assert_array_equal(a[k]["label"], b[k]["label"])


def test_train_other_seed_other_batches():
  a = pipeline.train_dataset(IndexSource(NUM_TRAIN), preprocess=identity, global_batch_size=BATCH, seed=1)
  b = pipeline.train_dataset(IndexSource(NUM_TRAIN), preprocess=identity, global_batch_size=BATCH, seed=2)
  assert not np.array_equal(a[0]["label"], b[0]["label"])


def test_train_epoch_has_no_repeats_and_drops_remainder():
  ds = pipeline.train_dataset(IndexSource(NUM_TRAIN), preprocess=identity, global_batch_size=BATCH, seed=0)
  for epoch in range(3):
    labels = train_labels(ds, range(epoch * BATCHES_PER_EPOCH, (epoch + 1) * BATCHES_PER_EPOCH))
    assert len(labels) == BATCHES_PER_EPOCH * BATCH == 1400
    assert len(set(labels.tolist())) == 1400  # No example twice within an epoch.
    assert labels.min() >= 0
    assert labels.max() < NUM_TRAIN


def test_train_next_epoch_is_another_permutation():
  ds = pipeline.train_dataset(IndexSource(NUM_TRAIN), preprocess=identity, global_batch_size=BATCH, seed=0)
  epoch0 = train_labels(ds, range(0, BATCHES_PER_EPOCH))
  epoch1 = train_labels(ds, range(BATCHES_PER_EPOCH, 2 * BATCHES_PER_EPOCH))
  assert not np.array_equal(epoch0, epoch1)
  # The dropped remainder differs too: the epochs do not use the same 1400 examples.
  assert set(epoch0.tolist()) != set(epoch1.tolist())


def test_train_process_slices_concatenate_to_global_batch():
  pp = ops.parse("random_shift(1)|random_flip_lr")
  kwargs = dict(preprocess=pp, global_batch_size=BATCH, seed=4)
  single = pipeline.train_dataset(IndexSource(NUM_TRAIN), **kwargs)
  p0 = pipeline.train_dataset(IndexSource(NUM_TRAIN), process_index=0, process_count=2, **kwargs)
  p1 = pipeline.train_dataset(IndexSource(NUM_TRAIN), process_index=1, process_count=2, **kwargs)
  # Including the last batch of epoch 0 and the first ones of epoch 1.
  for k in [0, 1, BATCHES_PER_EPOCH - 1, BATCHES_PER_EPOCH, BATCHES_PER_EPOCH + 1]:
    assert p0[k]["label"].shape == (BATCH // 2,)
    for key in ["label", "image"]:
      np.testing.assert_array_equal(np.concatenate([p0[k][key], p1[k][key]]), single[k][key])


def test_train_batch_larger_than_dataset_raises():
  with pytest.raises(UserError, match="input.batch_size=64 is larger than the 50 training examples"):
    pipeline.train_dataset(IndexSource(50), preprocess=identity, global_batch_size=64, seed=0)


def test_train_batch_equal_to_dataset_is_one_batch_per_epoch():
  ds = pipeline.train_dataset(IndexSource(50), preprocess=identity, global_batch_size=50, seed=0)
  assert sorted(ds[0]["label"].tolist()) == list(range(50))
  assert sorted(ds[1]["label"].tolist()) == list(range(50))
  assert not np.array_equal(ds[0]["label"], ds[1]["label"])


def test_train_on_digits_with_eval_pipeline(digits_train):
  ds = pipeline.train_dataset(digits_train, preprocess=ops.parse(PP_EVAL), global_batch_size=128, seed=0)
  batch = ds[11]  # 1438 // 128 == 11 batches an epoch: this is the first of epoch 1.
  assert batch["image"].shape == (128, 8, 8, 1)
  assert batch["labels"].shape == (128, 10)


def test_iterate_yields_same_batches_as_indexing():
  ds = pipeline.train_dataset(IndexSource(NUM_TRAIN), preprocess=identity, global_batch_size=BATCH, seed=0)
  it = pipeline.iterate(ds, num_threads=2, prefetch=2)
  for k in range(BATCHES_PER_EPOCH + 2):
    np.testing.assert_array_equal(next(it)["label"], ds[k]["label"])


def test_iterate_state_restores_on_fresh_iterator():
  ds = pipeline.train_dataset(IndexSource(NUM_TRAIN), preprocess=identity, global_batch_size=BATCH, seed=0)
  it = pipeline.iterate(ds, num_threads=2, prefetch=2)
  for _ in range(5):
    next(it)
  state = it.get_state()
  expected = [next(it)["label"] for _ in range(3)]

  fresh = pipeline.iterate(ds, num_threads=2, prefetch=2)
  fresh.set_state(state)
  for labels in expected:
    np.testing.assert_array_equal(next(fresh)["label"], labels)
  np.testing.assert_array_equal(expected[0], ds[5]["label"])


# ---------------------------------------------------------------------------------------
# pipeline.eval_batches.
# ---------------------------------------------------------------------------------------

NUM_EVAL = 359


def test_eval_covers_every_example_once_with_padding():
  batches = list(pipeline.eval_batches(IndexSource(NUM_EVAL), preprocess=identity, global_batch_size=64))
  assert len(batches) == 6  # ceil(359 / 64).
  for batch in batches:
    assert batch["label"].shape == (64,)
    assert batch["image"].shape == (64, 8, 8, 1)
    assert batch[pipeline.MASK].shape == (64,)
  masks = np.concatenate([b[pipeline.MASK] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  assert masks.sum() == NUM_EVAL
  real = labels[masks == 1]
  assert sorted(real.tolist()) == list(range(NUM_EVAL))


def test_eval_padding_rows_are_masked_zeros():
  batches = list(pipeline.eval_batches(IndexSource(NUM_EVAL), preprocess=identity, global_batch_size=64))
  last = batches[-1]
  real = NUM_EVAL - 5 * 64  # 39.
  np.testing.assert_array_equal(last[pipeline.MASK], [1.0] * real + [0.0] * (64 - real))
  np.testing.assert_array_equal(last["label"][:real], np.arange(5 * 64, NUM_EVAL))
  assert not last["label"][real:].any()
  assert not last["image"][real:].any()


def test_eval_with_preprocessing_keeps_mask(digits_train):
  batches = list(pipeline.eval_batches(digits_train, preprocess=ops.parse(PP_EVAL), global_batch_size=500))
  assert len(batches) == 3  # ceil(1438 / 500).
  assert sorted(batches[0]) == ["_mask", "image", "labels"]
  assert batches[-1]["labels"].shape == (500, 10)
  assert sum(b[pipeline.MASK].sum() for b in batches) == 1438


def test_eval_three_processes_cover_every_example_once():
  per_process = [
      list(pipeline.eval_batches(IndexSource(NUM_EVAL), preprocess=identity, global_batch_size=48,
                                 process_index=p, process_count=3))
      for p in range(3)
  ]
  # 120 examples for process 0, 120 for 1, 119 for 2: ceil(120 / 16) == 8 batches each.
  assert [len(batches) for batches in per_process] == [8, 8, 8]
  real = []
  for batches in per_process:
    for batch in batches:
      assert batch["label"].shape == (16,)
      real += batch["label"][batch[pipeline.MASK] == 1].tolist()
  assert len(real) == NUM_EVAL
  assert sorted(real) == list(range(NUM_EVAL))


def test_eval_process_whose_share_runs_out_yields_only_padding():
  # 4 examples over 3 processes, 1 per process batch: shares [0, 3], [1] and [2].
  kwargs = dict(preprocess=identity, global_batch_size=3, process_count=3)
  p0 = list(pipeline.eval_batches(IndexSource(4), process_index=0, **kwargs))
  p1 = list(pipeline.eval_batches(IndexSource(4), process_index=1, **kwargs))
  assert len(p0) == len(p1) == 2
  assert [b["label"].tolist() for b in p0] == [[0], [3]]
  assert [b[pipeline.MASK].tolist() for b in p0] == [[1.0], [1.0]]
  assert p1[0]["label"].tolist() == [1]
  assert [b[pipeline.MASK].tolist() for b in p1] == [[1.0], [0.0]]


def test_eval_more_processes_than_examples_raises():
  with pytest.raises(UserError, match="evaluation split of 2 examples cannot be shared by 3 processes"):
    pipeline.eval_batches(IndexSource(2), preprocess=identity, global_batch_size=3, process_count=3)
