"""Tests for jaxtrain.data.mixture: weighted mixtures, mixed deterministically per batch."""

import glob
import json
import math
import os
import shutil
import subprocess
import sys

import jax

import ml_collections
import numpy as np
import pytest

from conftest import read_checkpoint, tiny_lm
from jaxtrain.config import Reader, check_all_read
from jaxtrain import data
from jaxtrain.data import documents
from jaxtrain.data import mixture
from jaxtrain.data import pipeline
from jaxtrain.errors import UserError
from jaxtrain import train

TESTS = os.path.dirname(os.path.abspath(__file__))


class TaggedSource:
  """A fake source: 'tag' says which source an example came from, 'index' which example."""

  def __init__(self, num_examples, tag, width=3):
    self.num_examples, self.tag, self.width = num_examples, tag, width

  def __len__(self):
    return self.num_examples

  def read(self, indices):
    indices = np.asarray(indices, np.int64)
    return {"index": indices, "tag": np.full(len(indices), self.tag), "x": np.zeros((len(indices), self.width))}


def identity(batch, rng):
  del rng
  return batch


def fake_mixture(weights, sizes):
  """A Mixture opened from a config, each source a TaggedSource (tag = its place by name)."""
  cfg = Reader({"input": {"data": {"mixture": {n: {"weight": w, "name": n} for n, w in weights.items()}}}})
  tags = {n: i for i, n in enumerate(sorted(weights))}
  return mixture.open_mixture(cfg.input.data, lambda section, like: TaggedSource(sizes[section.name], tags[section.name]))


def batches(source, count, batch_size=32, seed=0, process_index=0, process_count=1):
  ds = pipeline.train_dataset(source, preprocess=identity, global_batch_size=batch_size, seed=seed,
                              process_index=process_index, process_count=process_count)
  return [ds[k] for k in range(count)]


def test_each_source_gets_its_share_of_every_batch_and_of_the_stream():
  weights, sizes = {"a": 0.5, "b": 0.3, "c": 0.2}, {"a": 100, "b": 37, "c": 1000}
  mix = fake_mixture(weights, sizes)
  seen = np.zeros(3, np.int64)
  for k, batch in enumerate(batches(mix, 200)):
    counts = np.bincount(batch["tag"], minlength=3)
    assert counts.sum() == 32
    # Every batch: within one or two of its exact share; all batches so far: within one per source.
    assert np.all(np.abs(counts - np.array([0.5, 0.3, 0.2]) * 32) < 2)
    seen += counts
    assert np.all(np.abs(seen - np.array([0.5, 0.3, 0.2]) * 32 * (k + 1)) <= 3)
  np.testing.assert_array_equal(mix.counts(np.array([200 * 32]))[:, 0], seen)
  # An epoch is a pass over the main source (the largest weight): 100 / 0.5 examples.
  assert mix.main == "a" and len(mix) == 200 and len(mix) // 32 == 6


def test_each_source_is_read_in_seeded_passes_every_example_once_per_pass():
  mix = fake_mixture({"new": 0.8, "old": 0.2}, {"new": 50, "old": 7})
  stream = [b for b in batches(mix, 40, batch_size=10)]
  for tag, size in ((0, 50), (1, 7)):
    indices = np.concatenate([b["index"][b["tag"] == tag] for b in stream])
    passes = len(indices) // size
    assert passes >= 4
    for p in range(passes):
      assert sorted(indices[p * size:(p + 1) * size]) == list(range(size))
    assert not np.array_equal(indices[:size], indices[size:2 * size])  # A fresh permutation each pass.
  other_seed = batches(mix, 3, batch_size=10, seed=1)
  assert not np.array_equal(other_seed[0]["index"], stream[0]["index"])
  np.testing.assert_array_equal(other_seed[0]["tag"], stream[0]["tag"])  # Where: weights alone.


def test_a_source_of_weight_zero_is_opened_but_never_read():
  mix = fake_mixture({"a": 1.0, "b": 0.0, "c": 0.0}, {"a": 10, "b": 5, "c": 5})
  assert sorted(mix.sources) == ["a", "b", "c"] and len(mix) == 10
  assert all(np.all(b["tag"] == 0) for b in batches(mix, 5, batch_size=4))


@pytest.mark.parametrize("process_count", [2, 4])
def test_the_global_batches_are_the_same_for_any_number_of_processes(process_count):
  mix = fake_mixture({"new": 0.7, "old": 0.3}, {"new": 61, "old": 13})
  whole = batches(mix, 25)
  slices = [batches(mix, 25, process_index=p, process_count=process_count) for p in range(process_count)]
  for k, batch in enumerate(whole):
    for key in batch:
      np.testing.assert_array_equal(np.concatenate([s[k][key] for s in slices]), batch[key])


def test_a_restored_iterator_continues_with_the_same_batches():
  mix = fake_mixture({"new": 0.6, "old": 0.4}, {"new": 45, "old": 20})
  ds = pipeline.train_dataset(mix, preprocess=identity, global_batch_size=8, seed=3)
  it = pipeline.iterate(ds, num_threads=2, prefetch=2)
  for _ in range(7):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(12)]
  again = pipeline.iterate(pipeline.train_dataset(mix, preprocess=identity, global_batch_size=8, seed=3),
                           num_threads=1, prefetch=1)
  again.set_state(state)
  for want in expected:
    got = next(again)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  np.testing.assert_array_equal(expected[0]["index"], ds[7]["index"])  # Batch k is made from k alone.


def digits_mixture(**more):
  return dict(name="digits", split="train", cache=True,
              mixture=dict(low=dict(classes=(0, 1, 2, 3, 4), weight=3.0), high=dict(classes=(5, 6, 7, 8, 9), weight=1.0)),
              **more)


def test_a_digits_mixture_from_the_config_and_a_per_source_evaluation_section(tfds_dir):
  cfg = Reader({"input": {"data": digits_mixture()}, "evals": {"high": {"data": {"source": "high", "split": "test"}}}})
  mix = data.open_from_config(cfg.input.data)
  assert mix.names == ["high", "low"] and mix.main == "low"
  low, high = len(mix.sources["low"]), len(mix.sources["high"])
  assert len(mix) == low * 4 // 3 and low + high == 1438
  labels = np.concatenate([b["label"] for b in batches(mix, 40)])
  assert np.mean(labels < 5) == pytest.approx(0.75, abs=1 / 1280)
  # The evaluator's section: that source's dataset and classes, its own split.
  test_high = data.open_from_config(cfg.evals.high.data, like=mix)
  labels = test_high.read(np.arange(len(test_high)))["label"]
  assert set(labels.tolist()) == {5, 6, 7, 8, 9} and len(test_high) < 359
  check_all_read(cfg)


def mixture_lm(corpus):
  """tests/tiny_lm.py on a mixture of two halves of the corpus (0.8 and 0.2), each with
  documents in its validation split, evaluated each on its own."""
  files = sorted(glob.glob(os.path.join(corpus, "*.py")))
  held = [f for f in files if documents.in_split(next(documents.read("text", [f])), "validation", 0.3)]
  rest = [f for f in files if f not in held]
  assert len(held) >= 2, held
  new, old = held[::2] + rest[::2], held[1::2] + rest[1::2]
  config = tiny_lm(corpus)
  config.total_steps, config.log_every_steps = 12, 6
  config.checkpoint = dict(keep=3, every_steps=6)
  config.input.data = dict(split="train", seq_len=32, tokenizer=dict(kind="bpe", vocab_size=384),
                           validation_fraction=0.3, format="text", data_dir=ml_collections.config_dict.placeholder(str),
                           mixture=dict(new=dict(files=new, weight=0.8), old=dict(files=old, weight=0.2)))
  config.evals = ml_collections.ConfigDict(dict(
      val_new=dict(type="lm", data=dict(split="validation", source="new"), every_steps=6),
      val_old=dict(type="lm", data=dict(split="validation", source="old"), every_steps=6)))
  return config


def test_two_text_sources_train_and_are_evaluated_each_on_its_own_validation_split(tfds_dir, corpus, tmp_path):
  config = mixture_lm(corpus)
  workdir = str(tmp_path / "run")
  train.run(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  last = {k: v for row in rows for k, v in row.items()}
  mix = data.open_from_config(Reader(config).input.data)
  for name in ("new", "old"):
    held_out = data.open_from_config(Reader({"split": "validation", "source": name}), like=mix)
    assert held_out.tokenizer.fingerprint == mix.tokenizer.fingerprint
    assert last[f"val_{name}/num_tokens"] == int(held_out.read(np.arange(len(held_out)))["weights"].sum())
    assert math.isfinite(last[f"val_{name}/loss"])
  assert last["val_new/num_tokens"] != last["val_old/num_tokens"]
  assert os.path.exists(os.path.join(workdir, "tokenizer.json"))  # The shared tokenizer, kept.

  # Resumed from step 6 (as if killed after it), the run ends as the uninterrupted one did.
  resumed = str(tmp_path / "resumed")
  shutil.copytree(workdir, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "12"))
  train.run(config, resumed)
  want, got = read_checkpoint(workdir, 12), read_checkpoint(resumed, 12)
  for a, b in zip(jax.tree.leaves(want["params"]), jax.tree.leaves(got["params"])):
    np.testing.assert_array_equal(a, b)


def bad(section=None, evals=None, **more):
  return Reader({"input": {"data": section or digits_mixture(**more)}, "evals": evals or {}})


BAD = [
    ("negative", dict(mixture=dict(a=dict(weight=-0.2), b=dict(weight=1.0))),
     "'input.data.mixture.a.weight' must be a finite number >= 0, got -0.2"),
    ("nan", dict(mixture=dict(a=dict(weight=float("nan")), b=dict(weight=1.0))),
     "'input.data.mixture.a.weight' must be a finite number >= 0, got nan"),
    ("infinite", dict(mixture=dict(a=dict(weight=float("inf")), b=dict(weight=1.0))), "got inf"),
    ("all zero", dict(mixture=dict(a=dict(weight=0.0), b=dict(weight=0))),
     "the weights of config key 'input.data.mixture' sum to 0"),
    ("no weight", dict(mixture=dict(a=dict(weight=1.0), b=dict(classes=(1,)))),
     "'input.data.mixture.b.weight' is not set: each source of a mixture needs a weight"),
    ("not a number", dict(mixture=dict(a=dict(weight="0.5"), b=dict(weight=1.0))),
     "'input.data.mixture.a.weight' must be float, got '0.5'"),
    ("tiny", dict(mixture=dict(a=dict(weight=1e-9), b=dict(weight=1.0))), "less than 1/1048576 of the total"),
    ("empty", dict(mixture=dict()), "'input.data.mixture' has no sources; name each with its section"),
    ("not a section", dict(mixture=dict(a=0.5)), "'input.data.mixture.a' must be a data section with a weight"),
    ("own tokenizer", dict(seq_len=8, mixture=dict(a=dict(weight=1.0, tokenizer="x.model"))),
     "'input.data.mixture.a.tokenizer': the sources of a mixture share one tokenizer; set it once as "
     "'input.data.tokenizer'"),
]


@pytest.mark.parametrize("name,section,message", BAD, ids=[b[0] for b in BAD])
def test_bad_mixtures_fail_with_one_line(name, section, message):
  section = dict(name="digits", split="train", **section)
  with pytest.raises(UserError) as error:
    data.open_from_config(bad(section).input.data)
  text = str(error.value)
  assert "\n" not in text
  assert message in text, text


def test_an_empty_text_source_is_refused_naming_it_before_anything_is_made(tmp_path):
  good, empty = tmp_path / "good.txt", tmp_path / "empty.txt"
  good.write_text("some text to train a tokenizer on\n" * 50, encoding="utf-8")
  empty.write_bytes(b"")
  section = dict(split="train", seq_len=16, tokenizer=dict(kind="bpe", vocab_size=300), format="text",
                 validation_fraction=0.0, data_dir=str(tmp_path / "data"),
                 mixture=dict(new=dict(files=str(good), weight=0.8), old=dict(files=str(empty), weight=0.2)))
  with pytest.raises(UserError) as error:
    data.open_from_config(Reader({"input": {"data": section}}).input.data)
  assert str(error.value) == (f"config key 'input.data.mixture.old.files': {empty} is empty; put text in it, or "
                              f"leave it out")
  assert not os.path.exists(tmp_path / "data")  # Refused before the main source's tokenizer was trained.


def test_features_must_agree():
  cfg = Reader({"input": {"data": {"mixture": {"a": {"weight": 1.0}, "b": {"weight": 1.0}}}}})
  opened = iter([TaggedSource(5, 0, width=3), TaggedSource(5, 1, width=4)])
  with pytest.raises(UserError, match=r"'input.data.mixture.b': source 'b' gives .*x \[4\] float64 but 'a' gives "
                                      r".*x \[3\] float64; the sources of a mixture must give the same features"):
    mixture.open_mixture(cfg.input.data, lambda section, like: next(opened))


def test_bad_evaluation_sections_and_batch_sizes(tfds_dir):
  cfg = bad(evals={"a": {"data": {"source": "hihg", "split": "test"}}, "b": {"data": {"split": "test"}},
                   "c": {"data": digits_mixture()}, "d": {"data": {"source": "low", "name": "digits", "split": "test"}}})
  mix = data.open_from_config(cfg.input.data)
  with pytest.raises(UserError, match=r"'evals.a.data.source' is 'hihg', not a source of the mixture \(did you mean "
                                      r"'high'\?\); the sources are high, low"):
    data.open_from_config(cfg.evals.a.data, like=mix)
  with pytest.raises(UserError, match=r"'evals.b.data.source' is not set: training reads a mixture, so name the "
                                      r"source to evaluate \(high, low\)"):
    data.open_from_config(cfg.evals.b.data, like=mix)
  with pytest.raises(UserError, match=r"'evals.c.data.mixture': a mixture is for input.data"):
    data.open_from_config(cfg.evals.c.data, like=mix)
  plain = data.open_from_config(Reader({"name": "digits", "split": "train"}))
  with pytest.raises(UserError, match=r"'evals.d.data.source' names a source of a mixture, but input.data has no "
                                      r"mixture"):
    data.open_from_config(cfg.evals.d.data, like=plain)
  with pytest.raises(UserError, match=r"input.batch_size=2048 is larger than one epoch of the mixture \(a pass over "
                                      r"its main source 'low'"):
    pipeline.train_dataset(mix, preprocess=identity, global_batch_size=2048, seed=0)


# ---- 1 device = 8 devices = 2 processes (slow: separate processes) ---------------------------


def launch(tmp_path, workdir, corpus, *more, devices=1):
  config = tmp_path / "mixture_lm.py"
  config.write_text(f"import sys\nsys.path.insert(0, {TESTS!r})\nfrom test_mixtures import mixture_lm as get_config\n")
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return subprocess.Popen([sys.executable, "-m", "jaxtrain.launch", f"--config={config}:{corpus}",
                           f"--workdir={workdir}", *more], cwd=os.path.dirname(TESTS), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env)


def rows_of(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  return [{k: v for k, v in r.items() if not k.endswith(("_per_sec", "_seconds", "mfu"))} for r in rows]


def assert_same_rows(got, expected, what):
  assert [sorted(r) for r in got] == [sorted(r) for r in expected], what
  for a, b in zip(got, expected):
    for key in a:
      np.testing.assert_allclose(a[key], b[key], rtol=2e-5, atol=1e-6, err_msg=f"{what} {key} step {a['step']}")


@pytest.mark.slow
def test_a_mixture_trains_on_8_devices_and_on_2_processes_as_on_one_device(tfds_dir, corpus, tmp_path):
  from test_multihost import free_port  # pylint: disable=import-outside-toplevel
  runs = {"one": [launch(tmp_path, tmp_path / "one", corpus)],
          "eight": [launch(tmp_path, tmp_path / "eight", corpus, devices=8)]}
  for name, processes in runs.items():
    for process in processes:
      _, stderr = process.communicate(timeout=600)
      assert process.returncode == 0, f"{name}: {stderr[-3000:]}"
  port = free_port()
  two = [launch(tmp_path, tmp_path / "two", corpus, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                f"--process_id={i}") for i in range(2)]
  for process in two:
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
  expected = rows_of(tmp_path / "one")
  assert any("val_old/loss" in r for r in expected)
  assert_same_rows(rows_of(tmp_path / "eight"), expected, "8 devices")
  assert_same_rows(rows_of(tmp_path / "two"), expected, "2 processes")
