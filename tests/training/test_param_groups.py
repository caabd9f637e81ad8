"""Parameter groups (optimizer.freeze, .lr_mults, .wd_mults): what each does to the update,
the optimizer state and the compiled step, their config mistakes, and a digits run with
frozen parameters on 1 and on 8 (fake CPU) devices."""

import json
import logging
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import read_checkpoint
from jaxtrain.config import Reader
from jaxtrain.errors import UserError
from jaxtrain import models
from jaxtrain import paths
from jaxtrain import step as step_lib
from jaxtrain import tasks
from jaxtrain import train
from jaxtrain.training import build as build_lib
from jaxtrain.training import optim
from test_train import tiny_config

PARAMS = {"a": {"kernel": jnp.array([[1.0, -2.0], [4.0, 0.5]]), "bias": jnp.array([3.0, -1.0])},
          "b": {"kernel": jnp.array([[2.0, 1.0], [-1.0, 3.0]]), "bias": jnp.array([0.5, 2.0])}}


def build(params=PARAMS, **optimizer):
  """(tx, groups) for `params` from an optimizer section read as train.py reads it."""
  optimizer.setdefault("name", "sgd")
  optimizer.setdefault("lr", 0.1)
  section = Reader(ml_collections.ConfigDict({"optimizer": optimizer, "schedule": {}}))
  groups = optim.param_groups(section.optimizer, params)
  tx, _ = optim.build(section.optimizer, section.schedule, total_steps=10, steps_per_epoch=5, batch_size=4,
                      groups=groups)
  return tx, groups


def one_update(tx, grads, params=PARAMS):
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates


def ones(params=PARAMS):
  return jax.tree.map(jnp.ones_like, params)


def zeros(params=PARAMS):
  return jax.tree.map(jnp.zeros_like, params)


# ---- The update ----------------------------------------------------------------------------


def test_a_group_with_lr_mult_half_moves_exactly_half_as_far():
  plain = one_update(build()[0], ones())
  halved = one_update(build(lr_mults=(("params/a/", 0.5),))[0], ones())
  jax.tree.map(lambda h, p: np.testing.assert_array_equal(h, 0.5 * p), halved["a"], plain["a"])
  jax.tree.map(np.testing.assert_array_equal, halved["b"], plain["b"])  # Unmatched: 1.0.


def test_the_first_matching_lr_rule_wins_and_zero_stops_a_group():
  updates = one_update(build(lr_mults=(("a/kernel", 0.0), ("a/", 2.0)))[0], ones())
  np.testing.assert_array_equal(updates["a"]["kernel"], np.zeros((2, 2)))
  np.testing.assert_allclose(updates["a"]["bias"], -0.2 * np.ones(2), rtol=1e-6)


def test_wd_mults_scale_the_decay_and_a_rule_naming_biases_decays_them():
  lr, wd = 0.1, 0.5
  tx, _ = build(lr=lr, weight_decay=wd, wd_mults=(("a/kernel", 0.5), ("a/bias", 1.0)))
  updates = one_update(tx, zeros())
  np.testing.assert_allclose(updates["a"]["kernel"], -lr * wd * 0.5 * PARAMS["a"]["kernel"], rtol=1e-6)
  np.testing.assert_allclose(updates["a"]["bias"], -lr * wd * PARAMS["a"]["bias"], rtol=1e-6)
  np.testing.assert_allclose(updates["b"]["kernel"], -lr * wd * PARAMS["b"]["kernel"], rtol=1e-6)
  np.testing.assert_array_equal(updates["b"]["bias"], np.zeros(2))  # Unmatched 1-D: no decay, as before.


def test_the_group_lr_scales_its_decay_too():
  tx, _ = build(lr=0.1, weight_decay=0.5, lr_mults=(("b/", 0.5),))
  updates = one_update(tx, zeros())
  np.testing.assert_allclose(updates["a"]["kernel"], -0.1 * 0.5 * PARAMS["a"]["kernel"], rtol=1e-6)
  np.testing.assert_allclose(updates["b"]["kernel"], -0.1 * 0.5 * 0.5 * PARAMS["b"]["kernel"], rtol=1e-6)


def test_without_groups_the_optimizer_state_keeps_its_structure():
  """Checkpoints written before parameter groups existed restore: same state tree."""
  optimizer = dict(name="adamw", lr=0.1, weight_decay=1e-4, grad_clip_norm=1.0)
  section = Reader(ml_collections.ConfigDict({"optimizer": optimizer, "schedule": {}}))
  old, _ = optim.build(section.optimizer, section.schedule, total_steps=10, steps_per_epoch=5, batch_size=4)
  new, _ = build(**optimizer)
  assert jax.tree.structure(old.init(PARAMS)) == jax.tree.structure(new.init(PARAMS))


# ---- Freezing ------------------------------------------------------------------------------


def test_frozen_params_get_zero_updates_and_no_optimizer_state():
  tx, groups = build(name="adamw", weight_decay=0.1, grad_clip_norm=1.0, freeze=("params/a/",))
  state = tx.init(PARAMS)
  sizes = [x.size for x in jax.tree.leaves(state)]
  trainable = sum(x.size for x in jax.tree.leaves(PARAMS["b"]))
  assert sum(sizes) == 2 * trainable + sizes.count(1)  # Adam's mu and nu for 'b' only, and step counts.
  updates, _ = tx.update(ones(), state, PARAMS)
  jax.tree.map(lambda u: np.testing.assert_array_equal(u, 0.0), updates["a"])
  assert all(np.all(u != 0) for u in jax.tree.leaves(updates["b"]))
  assert groups.trainable == {"a": {"kernel": False, "bias": False}, "b": {"kernel": True, "bias": True}}


def test_clipping_sees_only_trainable_gradients():
  tx, _ = build(lr=1.0, grad_clip_norm=1.0, freeze=("params/a/",))
  grads = {"a": jax.tree.map(lambda x: 1e6 * jnp.ones_like(x), PARAMS["a"]),
           "b": {"kernel": jnp.full((2, 2), 0.1), "bias": jnp.full(2, 0.1)}}  # Norm 0.24: not clipped.
  updates = one_update(tx, grads)
  np.testing.assert_allclose(updates["b"]["kernel"], -0.1 * np.ones((2, 2)), rtol=1e-6)


def test_the_counts_are_logged(caplog):
  with caplog.at_level(logging.INFO):
    build(freeze=("a/kernel",))
  assert "Parameters: 12 (8 trainable, 4 frozen by optimizer.freeze)" in caplog.text


# ---- Config mistakes -----------------------------------------------------------------------


@pytest.mark.parametrize("optimizer, message", [
    (dict(freeze=("params/c/",)), r"^optimizer.freeze\[0\] pattern 'params/c/' matches no array of the parameters "
                                  r"\(paths look like 'params/a/bias'\); fix the pattern or drop the rule$"),
    (dict(lr_mults=(("a/", 1.0), ("nope", 2.0))), r"^optimizer.lr_mults\[1\] pattern 'nope' matches no array"),
    (dict(lr_mults=(("a/", -0.5),)), r"^optimizer.lr_mults\[0\] must be \(regex, multiplier\) with a multiplier "
                                     r">= 0 like \('head/', 0.1\), got \('a/', -0.5\)$"),
    (dict(weight_decay=0.1, wd_mults=(("a/", -1),)), r"^optimizer.wd_mults\[0\] must be \(regex, multiplier\)"),
    (dict(lr_mults=("a/", 0.5)), r"^optimizer.lr_mults\[0\] must be \(regex, multiplier\)"),
    (dict(freeze="a/"), r"^config key 'optimizer.freeze' must be a tuple of regexes"),
    (dict(freeze=("a/[",)), r"^optimizer.freeze\[0\] pattern 'a/\[' is not a regular expression"),
    (dict(freeze=(".",)), r"^optimizer.freeze freezes every parameter, so nothing would train"),
    (dict(wd_mults=(("a/", 0.5),)), r"^optimizer.wd_mults multiplies optimizer.weight_decay, which is 0"),
])
def test_a_config_mistake_is_one_line_naming_the_key(optimizer, message):
  with pytest.raises(UserError, match=message) as err:
    build(**optimizer)
  assert "\n" not in str(err.value)


def test_build_without_groups_refuses_group_keys():
  section = Reader(ml_collections.ConfigDict({"optimizer": dict(name="sgd", lr=0.1, freeze=("a/",)), "schedule": {}}))
  with pytest.raises(ValueError, match="param_groups"):
    optim.build(section.optimizer, section.schedule, total_steps=10, steps_per_epoch=5, batch_size=4)


# ---- The compiled step ---------------------------------------------------------------------

CNN = {"name": "cnn", "num_classes": 10, "features": (8, 16), "dense": 32}


def compiled_step(accumulate_steps=1, model=None, **optimizer):
  """The digits CNN's train step (batch 32 of 8x8 images), compiled, and its first state."""
  cfg = Reader(ml_collections.ConfigDict({"model": {**CNN, **(model or {})}, "loss": {"name": "softmax_xent"},
                                          "optimizer": {"name": "adamw", "lr": 1e-2, "weight_decay": 1e-4,
                                                        "grad_clip_norm": 1.0, **optimizer}, "schedule": {}}))
  model, task = models.build(cfg.model), tasks.build(cfg)
  example = ([np.zeros((1, 8, 8, 1), np.float32)], {})
  groups = optim.param_groups(cfg.optimizer, step_lib.abstract_params(model, example, 0))
  tx, lr_fn = optim.build(cfg.optimizer, cfg.schedule, total_steps=10, steps_per_epoch=5, batch_size=32, groups=groups)
  state = step_lib.create_state(model, tx, example, 0)
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(32, 8, 8, 1)).astype(np.float32),
           "labels": np.eye(10, dtype=np.float32)[rng.integers(0, 10, 32)]}
  fn = step_lib.make_train_step(model, task, tx, lr_fn, trainable=groups.trainable, accumulate_steps=accumulate_steps)
  return jax.jit(fn).lower(state, batch).compile(), state, batch


def flops(compiled):
  cost = compiled.cost_analysis()
  return (cost[0] if isinstance(cost, list) else cost)["flops"]


BUT_HEAD = "^params/(?!head/)"


def test_a_step_with_frozen_params_computes_no_gradient_for_them():
  full, _, _ = compiled_step()
  frozen, _, _ = compiled_step(freeze=(BUT_HEAD,))
  stopped, _, _ = compiled_step(lr_mults=((BUT_HEAD, 0.0),))
  # No backward pass through the convolutions at all: about a third of the FLOPs.
  assert flops(frozen) < 0.5 * flops(full)
  assert flops(stopped) > 0.9 * flops(full)  # lr_mult 0 still computes everything.
  assert frozen.memory_analysis().temp_size_in_bytes < full.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("accumulate_steps", [1, 2])
def test_frozen_params_stay_bit_identical_and_the_others_train(accumulate_steps):
  step, state, batch = compiled_step(accumulate_steps, freeze=("Conv_0/",))
  before = jax.tree.map(np.array, state.params)
  for _ in range(3):
    state, metrics = step(state, batch)
  for name in ("Conv_0",):
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), state.params[name], before[name])
  for name in set(before) - {"Conv_0"}:  # Conv_1, BatchNorm_*, Dense_0, head.
    assert not all(np.array_equal(np.asarray(a), b) for a, b in zip(jax.tree.leaves(state.params[name]),
                                                                       jax.tree.leaves(before[name]))), name
  assert np.isfinite(metrics["grad_norm"])


def test_frozen_accumulation_equals_the_large_batch():
  no_bn = {"batch_norm": False}  # Batch statistics differ per microbatch.
  large, state, batch = compiled_step(model=no_bn, freeze=("Conv_0/",))
  micro, _, _ = compiled_step(4, model=no_bn, freeze=("Conv_0/",))
  copy = jax.tree.map(jnp.array, state)
  (state_l, m_l), (state_m, m_m) = large(state, batch), micro(copy, batch)
  np.testing.assert_allclose(m_m["loss"], m_l["loss"], rtol=1e-5)
  np.testing.assert_allclose(m_m["grad_norm"], m_l["grad_norm"], rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), state_m.params, state_l.params)


# ---- Training runs -------------------------------------------------------------------------


def frozen_config(**parallel):
  """The tiny digits MLP, its first layer frozen; no dropout (pmap draws it per device)."""
  c = tiny_config()
  c.model.dropout = 0.0
  c.optimizer.freeze = ("Dense_0/",)
  c.optimizer.lr_mults = (("head/bias", 0.5),)
  c.parallel.update(ml_collections.ConfigDict(parallel))
  return c


def initial_params(config):
  exp = build_lib.build(config)
  return jax.device_get(exp.strategy.init(exp.create, exp.abstract_state).params)


def test_a_digits_run_leaves_frozen_params_bit_identical_and_resumes(tfds_dir, tmp_path):
  config = frozen_config()
  start = initial_params(config)
  workdir = str(tmp_path / "run")
  train.run(config, workdir)
  saved = read_checkpoint(workdir, 30)
  for name, value in start["Dense_0"].items():
    assert np.array_equal(saved["params"]["Dense_0"][name], value), name
  assert not np.array_equal(saved["params"]["head"]["kernel"], start["head"]["kernel"])
  assert not any("Dense_0" in name for name in paths.names(saved["opt_state"]))  # No state for frozen params.
  # Resuming restores the multi_transform state and continues the same run.
  shutil.rmtree(os.path.join(workdir, "checkpoints", "30"))
  train.run(config, workdir)
  jax.tree.map(np.testing.assert_array_equal, read_checkpoint(workdir, 30)["params"], saved["params"])


ON_EIGHT = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
sys.path.insert(0, {tests!r})
import jax
from jaxtrain import train
from test_param_groups import VARIANTS, frozen_config
assert jax.device_count() == 8
for name, variant in VARIANTS.items():
  train.run(frozen_config(**variant), os.path.join({root!r}, name))
"""

VARIANTS = {
    "jit_fsdp": {"mesh": {"data": 1, "fsdp": -1}, "fsdp_min_size": 0},
    "pmap_accumulate": {"strategy": "pmap", "accumulate_steps": 2},
}


def curves_and_params(workdir, like=None):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  curves = {key: [r[key] for r in rows if key in r] for key in ("train/loss", "train/grad_norm", "val/loss")}
  return curves, read_checkpoint(workdir, 30, like)


@pytest.mark.slow
def test_eight_devices_with_fsdp_or_pmap_train_frozen_params_as_one_device(tfds_dir, tmp_path):
  one = str(tmp_path / "one")
  train.run(frozen_config(), one)
  script = ON_EIGHT.format(tests=os.path.dirname(__file__), root=str(tmp_path))
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  curves_1, state_1 = curves_and_params(one)
  for name in VARIANTS:
    curves_8, state_8 = curves_and_params(os.path.join(tmp_path, name), like=state_1)
    for key, curve in curves_1.items():
      np.testing.assert_allclose(curves_8[key], curve, rtol=2e-5, err_msg=f"{name} {key}")
    for a, b in zip(jax.tree.leaves(state_1), jax.tree.leaves(state_8), strict=True):
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6, err_msg=name)
    jax.tree.map(np.testing.assert_array_equal, state_8["params"]["Dense_0"], state_1["params"]["Dense_0"])
