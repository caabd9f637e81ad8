"""The few-shot probe (evals/fewshot.py) and the class filter of data sections."""

import functools
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from jaxtrain import config as config_lib
from jaxtrain import data
from jaxtrain.errors import UserError
from jaxtrain.evals import linear_probes as fewshot
from jaxtrain import step
from jaxtrain import train
from jaxtrain.training import build as build_lib
from test_train import read_rows, tiny_config

PP = "value_range(-1, 1)|keep('image', 'label')"
HIGH = (5, 6, 7, 8, 9)


def probe_config(**changes):
  """The tiny digits MLP with one fewshot evaluator probing the digits 5-9 (187 test
  images: not a multiple of the batch of 32)."""
  c = tiny_config()
  probe = dict(type="fewshot", pp=PP, batch_size=32, shots=(1, 5), seeds=(0, 1, 2), every_steps=10,
               datasets=dict(digits59=dict(name="digits", train_split="train", test_split="test", cache=True,
                                           classes=HIGH)))
  probe.update(changes)
  c.evals = ml_collections.ConfigDict({"fewshot": probe})
  return c


def build(config):
  """(evaluators by name, the model's variables at initialisation, the model)."""
  cfg = config_lib.Reader(config)
  strategy, _ = build_lib.build_strategy(cfg)
  seed = cfg.get("seed", 0)
  data_ = build_lib.build_data(cfg, strategy, seed)
  model = build_lib.build_model(cfg, data_)
  abstract = build_lib.abstract_variables(strategy, model, seed)
  evaluators = {s.name: s.evaluator for s in build_lib.build_evaluators(cfg, strategy, model, data_, abstract)}
  build_lib.skip_training_keys(cfg)  # As --mode=eval checks.
  config_lib.check_all_read(cfg)
  variables = strategy.init(functools.partial(step.init_variables, model.module, model.example_inputs, seed), abstract)
  return evaluators, variables, model


def section(**keys):
  return config_lib.Reader(ml_collections.ConfigDict(keys), "input.data")


# ---- The closed-form probe ----------------------------------------------------------------


@pytest.mark.parametrize("n, d", [(12, 5), (6, 9)])  # More examples than features, and fewer.
def test_the_weights_are_ridge_regression_solved_independently(n, d):
  rng = np.random.default_rng(0)
  x, y, l2 = rng.normal(size=(n, d)) * 3 + 1, rng.integers(0, 3, n), 0.7
  predict = fewshot.fit(x, y, np.arange(3), l2)
  # The same problem as ordinary least squares on rows appended for the penalty.
  z = np.concatenate([(x - x.mean(0)) / (x.std(0) + 1e-5), np.full((n, 1), fewshot.BIAS)], 1)
  targets = np.where(y[:, None] == np.arange(3), 1.0, -1.0)
  expected, *_ = np.linalg.lstsq(np.concatenate([z, np.sqrt(l2) * np.eye(d + 1)]),
                                 np.concatenate([targets, np.zeros((d + 1, 3))]), rcond=None)
  np.testing.assert_allclose(predict.weights, expected, rtol=1e-9, atol=1e-12)
  x_test = rng.normal(size=(7, d))
  z_test = np.concatenate([(x_test - x.mean(0)) / (x.std(0) + 1e-5), np.full((7, 1), fewshot.BIAS)], 1)
  np.testing.assert_array_equal(predict(x_test), np.argmax(z_test @ expected, 1))


def test_separable_classes_are_probed_perfectly_and_labels_keep_their_ids():
  rng = np.random.default_rng(1)
  centres = {3: (5.0, 0.0), 7: (0.0, 5.0), 9: (-5.0, -5.0)}
  y = np.repeat(list(centres), 30)[rng.permutation(90)]
  x = np.array([centres[c] for c in y]) + rng.normal(scale=0.3, size=(len(y), 2))
  for shots in (1, 5):
    assert fewshot.probe_accuracy(x[:60], y[:60], x[60:], y[60:], shots, seed=0, l2_reg=16.0) == 1.0
  assert set(fewshot.fit(x, y, np.array([3, 7, 9]), 1.0)(x)) == {3, 7, 9}


def test_draws_are_fixed_by_the_seed_nested_over_shots_and_differ_between_seeds():
  y = np.repeat(np.arange(4), 20)[np.random.default_rng(0).permutation(80)]
  five = fewshot.draw(y, 5, seed=3)
  np.testing.assert_array_equal(five, fewshot.draw(y, 5, seed=3))
  assert np.all(np.bincount(y[five]) == 5)
  assert set(fewshot.draw(y, 1, seed=3)) <= set(five)
  assert not np.array_equal(five, fewshot.draw(y, 5, seed=4))


# ---- The class filter of a data section ------------------------------------------------------


def test_classes_keep_only_those_examples_in_order_with_their_labels(tfds_dir):
  everything = data.open_source("digits", "train", cache=True).arrays
  for cache in (True, False):
    source = data.open_from_config(section(name="digits", split="train", cache=cache, classes=(0, 1, 2, 3, 4)))
    keep = np.isin(everything["label"], (0, 1, 2, 3, 4))
    assert len(source) == keep.sum() == 729
    batch = source.read(range(len(source)))
    np.testing.assert_array_equal(batch["label"], everything["label"][keep])  # Not renumbered.
    np.testing.assert_array_equal(batch["image"], everything["image"][keep])
  sevens = np.sum(data.open_source("digits", "test", cache=True).arrays["label"] == 7)
  assert len(data.open_from_config(section(name="digits", split="test", classes=7))) == sevens == 42


@pytest.mark.parametrize("keys, message", [
    (dict(classes=(5, 12)), r"config key 'input.data.classes': dataset 'digits' split 'train' has no examples "
                            r"of class 12; its 'label' classes are 0-9$"),
    (dict(classes=(5,), class_key="digit"), r"dataset 'digits' split 'train' has no feature 'digit' to keep classes "
                                            r"by \(config key 'input.data.class_key'\); its features are image, label"),
    (dict(classes="five"), r"config key 'input.data.classes' must be a non-empty list of class ids"),
    (dict(classes=()), r"config key 'input.data.classes' must be a non-empty list of class ids"),
])
def test_a_bad_class_filter_is_one_line(tfds_dir, keys, message):
  with pytest.raises(UserError, match=message):
    data.open_from_config(section(name="digits", split="train", **keys))


# ---- The evaluator ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tfds_dir):  # pylint: disable=unused-argument
  return build(probe_config())


def test_every_test_example_counts_once_in_order(built):
  evaluators, variables, model = built
  features = evaluators["fewshot"].features(variables)["digits59"]
  test = data.open_from_config(section(name="digits", split="test", cache=True, classes=HIGH))
  raw = test.read(range(len(test)))
  assert len(test) == 187 and len(features["test"]["index"]) == 187  # 6 batches of 32, the last padded.
  np.testing.assert_array_equal(features["test"]["index"], np.arange(187))
  np.testing.assert_array_equal(features["test"]["label"], raw["label"])
  images = raw["image"].astype(np.float32) * (2 / 255) - 1
  _, out = model.module.apply(variables, images, train=False)
  np.testing.assert_allclose(features["test"]["features"], np.asarray(out["pre_logits"]), rtol=1e-5, atol=1e-6)
  assert len(features["train"]["index"]) == 709


def test_results_are_fixed_by_the_seeds(built):
  evaluators, variables, _ = built
  probe = evaluators["fewshot"]
  first = probe.run(variables)
  assert first == probe.run(variables)
  assert set(first) == set(probe.metric_names) == {"digits59_1shot", "digits59_1shot_std", "digits59_5shot",
                                                   "digits59_5shot_std", "mean_1shot", "mean_5shot"}
  features = probe.features(variables)["digits59"]
  per_seed = [fewshot.probe_accuracy(features["train"]["features"], features["train"]["label"],
                                     features["test"]["features"], features["test"]["label"], 5, seed, probe.l2_reg)
              for seed in (0, 1, 2)]
  assert first["digits59_5shot"] == pytest.approx(np.mean(per_seed)) and len(set(per_seed)) > 1
  assert first["mean_5shot"] == first["digits59_5shot"]


def test_the_input_representation_is_the_preprocessed_input(tfds_dir):
  evaluators, variables, _ = build(probe_config(representation="input"))
  features = evaluators["fewshot"].features(variables)["digits59"]["test"]
  test = data.open_from_config(section(name="digits", split="test", classes=HIGH))
  images = test.read(range(len(test)))["image"].astype(np.float32) * (2 / 255) - 1
  np.testing.assert_allclose(features["features"], images.reshape(len(images), -1), atol=1e-6)


@pytest.mark.parametrize("changes, message", [
    (dict(shots=(1, 200)), r"fewshot dataset 'digits59' \(digits, train\) has 14\d training examples of class 5; "
                           r"200-shot needs 200 per class: lower shots or leave the class out"),
    (dict(representation="features"), r"config key 'evals.fewshot.representation' is 'features', which the model "
                                      r"does not return; choose one of 'pre_logits', 'logits', 'input'"),
    (dict(pp="value_range(-1, 1)|keep('image')"), r"evals.fewshot.pp must leave the labels 'label' \(label_key\)"),
    (dict(pp="value_range(-1, 1)|onehot(10)|keep('image', 'label')"),
     r"must give 'label' as one integer class id per example, got float32 of shape \(10,\)"),
    (dict(pp="keep('label')"), r"evals.fewshot.pp must leave the model's input 'image' in the batch; it has label"),
    (dict(shots=(0, 5)), r"config key 'evals.fewshot.shots' must be a non-empty list of integers >= 1"),
    (dict(l2_reg=0.0), r"config key 'evals.fewshot.l2_reg' must be positive, got 0.0"),
    (dict(datasets=dict(digits59=dict(name="digits", train_split="train", test_split="test", classes=(5, 12)))),
     r"'evals.fewshot.datasets.digits59.classes': dataset 'digits' split 'train' has no examples of class 12"),
    (dict(datasets=dict(digits=dict(name="digits", train_split="train", tset_split="test"))),
     r"config key 'evals.fewshot.datasets.digits.test_split' is required but not set \(did you mean"),
    (dict(shots_typo=1), r"unknown config key 'evals.fewshot.shots_typo'"),
    (dict(datasets=dict(d=dict(name="digits", train_split="train", test_split="test", class_key="label"))),
     r"unknown config key 'evals.fewshot.datasets.d.class_key'; nothing reads it"),  # Without classes.
])
def test_a_bad_probe_is_one_line_at_start_up(tfds_dir, changes, message):
  with pytest.raises(UserError, match=message):
    build(probe_config(**changes))


EIGHT_DEVICES = """
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
sys.path.insert(0, {tests!r})
import jax
from test_linear_probes import build, probe_config
assert jax.device_count() == 8
evaluators, variables, _ = build(probe_config())
print(json.dumps(evaluators["fewshot"].run(variables)))
"""


@pytest.mark.slow
def test_eight_devices_give_the_results_of_one(built):
  evaluators, variables, _ = built
  one = evaluators["fewshot"].run(variables)
  script = EIGHT_DEVICES.format(tests=os.path.dirname(__file__))
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  eight = json.loads(result.stdout.strip().splitlines()[-1])
  assert eight.keys() == one.keys()
  np.testing.assert_allclose([eight[k] for k in one], list(one.values()), atol=1e-12)


def test_a_run_on_some_classes_writes_fewshot_rows_for_the_others(tfds_dir, tmp_path):
  config = probe_config(seeds=(0, 1))
  config.input.data.classes = (0, 1, 2, 3, 4)  # 729 images: 22 steps of 32 per epoch.
  workdir = str(tmp_path / "run")
  last = train.run(config, workdir)
  rows = [r for r in read_rows(workdir) if any(k.startswith("fewshot/") for k in r)]
  assert [r["step"] for r in rows] == [10, 20, 30]
  assert set(rows[-1]) == {"step"} | {f"fewshot/{name}" for name in ("digits59_1shot", "digits59_1shot_std",
                                                                       "digits59_5shot", "digits59_5shot_std",
                                                                       "mean_1shot", "mean_5shot")}
  assert 0.2 < last["fewshot/digits59_5shot"] <= 1.0
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["input"]["data"]["classes"] == [0, 1, 2, 3, 4]
