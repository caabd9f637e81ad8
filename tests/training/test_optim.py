"""Learning-rate schedules and optimizers built from config sections."""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxtrain.config import Reader
from jaxtrain.errors import UserError
from jaxtrain.training import optim

LR = 0.5
TOTAL = 100
STEPS_PER_EPOCH = 10
BATCH = 8


def section(key, /, **values):
  """A config section read the way train.py reads it: `cfg.<key>`."""
  return getattr(Reader(ml_collections.ConfigDict({key: values})), key)


def schedule(lr=LR, total_steps=TOTAL, **values):
  return optim.build_schedule(section("schedule", **values), lr, total_steps=total_steps,
                              steps_per_epoch=STEPS_PER_EPOCH, batch_size=BATCH)


def build(schedule_values=None, total_steps=TOTAL, **optimizer_values):
  optimizer_values.setdefault("lr", LR)
  schedule_section = section("schedule", **(schedule_values or {"name": "constant"}))
  return optim.build(section("optimizer", **optimizer_values), schedule_section,
                     total_steps=total_steps, steps_per_epoch=STEPS_PER_EPOCH, batch_size=BATCH)


def values(fn, steps):
  return np.array([float(fn(jnp.int32(s))) for s in steps])


def assert_values(fn, expected, rtol=1e-6, atol=1e-7):
  steps, want = zip(*expected.items())
  np.testing.assert_allclose(values(fn, steps), want, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------
# Schedules.
# ---------------------------------------------------------------------------------------


def test_constant_schedule_is_lr_everywhere():
  assert_values(schedule(name="constant"), {0: LR, 1: LR, 50: LR, 99: LR})


def test_schedule_name_defaults_to_constant():
  assert_values(schedule(), {0: LR, 77: LR})


def test_linear_warmup_goes_from_zero_to_lr():
  fn = schedule(name="constant", warmup_steps=20)
  assert_values(fn, {0: 0.0, 5: LR / 4, 10: LR / 2, 20: LR, 60: LR})


def test_cosine_decays_from_lr_to_end_factor_times_lr():
  fn = schedule(name="cosine", warmup_steps=20, end_factor=0.1)  # Decays over 80 steps.
  half = 0.1 * LR + 0.9 * LR / 2
  assert_values(fn, {10: LR / 2, 20: LR, 60: half, 100: 0.1 * LR})


def test_cosine_halfway_is_half_lr_without_end_factor():
  fn = schedule(name="cosine", warmup_steps=20)
  assert_values(fn, {20: LR, 40: LR * (1 + np.cos(np.pi / 4)) / 2, 60: LR / 2, 100: 0.0})


def test_linear_decay():
  fn = schedule(name="linear", warmup_steps=20, end_factor=0.2)
  assert_values(fn, {20: LR, 60: 0.6 * LR, 100: 0.2 * LR})


def test_linear_decay_without_warmup_reaches_zero():
  fn = schedule(name="linear")
  assert_values(fn, {0: LR, 25: 0.75 * LR, 50: LR / 2, 100: 0.0})


def test_rsqrt_after_warmup():
  fn = schedule(name="rsqrt", warmup_steps=10, timescale=5)
  expected = {s: LR / np.sqrt(1 + (s - 10) / 5) for s in (10, 15, 30, 60, 99)}
  assert_values(fn, {5: LR / 2, **expected})


def test_rsqrt_timescale_defaults_to_warmup():
  fn = schedule(name="rsqrt", warmup_steps=10)
  assert_values(fn, {10: LR, 20: LR / np.sqrt(2), 40: LR / 2})


def test_step_decay_multiplies_by_factor_every_boundary():
  fn = schedule(name="step", decay_every_steps=30)
  assert_values(fn, {0: LR, 29: LR, 30: 0.1 * LR, 59: 0.1 * LR, 60: 0.01 * LR, 90: 0.001 * LR})


def test_step_decay_with_custom_factor_and_epochs():
  fn = schedule(name="step", decay_every_epochs=2, decay_factor=0.5)  # 20 steps.
  assert_values(fn, {19: LR, 20: LR / 2, 40: LR / 4})


def test_warmup_epochs_convert_with_steps_per_epoch():
  fn = schedule(name="constant", warmup_epochs=2)  # 2 * 10 = 20 steps.
  assert_values(fn, {0: 0.0, 10: LR / 2, 20: LR})


def test_fractional_warmup_epochs_round_up():
  fn = schedule(name="constant", warmup_epochs=0.25)  # ceil(2.5) = 3 steps.
  assert_values(fn, {0: 0.0, 3: LR}, atol=1e-7)
  assert float(fn(jnp.int32(2))) == pytest.approx(2 * LR / 3)


def test_warmup_examples_convert_with_batch_size():
  fn = schedule(name="constant", warmup_examples=80)  # 80 / 8 = 10 steps.
  assert_values(fn, {5: LR / 2, 10: LR})


@pytest.mark.parametrize("warmup", [100, 150])
def test_warmup_as_long_as_training_raises(warmup):
  with pytest.raises(UserError, match="warmup"):
    schedule(name="cosine", warmup_steps=warmup)


def test_warmup_in_two_units_raises():
  with pytest.raises(UserError, match="set only one of"):
    schedule(warmup_steps=5, warmup_epochs=1)


def test_unknown_schedule_name_suggests_closest():
  with pytest.raises(UserError, match="unknown schedule 'cosin'") as err:
    schedule(name="cosin")
  assert "did you mean 'cosine'" in str(err.value)


def test_step_schedule_requires_decay_every():
  with pytest.raises(UserError, match="schedule.decay_every_steps"):
    schedule(name="step")


# ---------------------------------------------------------------------------------------
# Optimizers.
# ---------------------------------------------------------------------------------------

TARGET = {"kernel": jnp.array([[1.0, -2.0], [3.0, 0.5]]), "bias": jnp.array([0.5, -1.0])}


def quadratic(params):
  return sum(jnp.sum((p - t) ** 2) for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(TARGET)))


def minimise(tx, params, steps):
  state = tx.init(params)

  @jax.jit
  def update(params, state):
    grads = jax.grad(quadratic)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(steps):
    params, state = update(params, state)
  return params


@pytest.mark.parametrize("optimizer", [
    dict(name="sgd", lr=0.05, momentum=0.9),
    dict(name="sgd", lr=0.05, momentum=0.9, nesterov=True),
    dict(name="sgd", lr=0.1),
    dict(name="adam", lr=0.1),
    dict(name="adamw", lr=0.1, weight_decay=1e-4),
    dict(name="adam", lr=0.1, b1=0.8, b2=0.99, eps=1e-6),
])
def test_optimizer_minimises_a_quadratic(optimizer):
  tx, _ = build(**optimizer)
  params = jax.tree.map(jnp.zeros_like, TARGET)
  start = float(quadratic(params))
  params = minimise(tx, params, steps=150)
  assert float(quadratic(params)) < 1e-2 * start
  np.testing.assert_allclose(params["kernel"], TARGET["kernel"], atol=0.1)


def test_build_returns_the_schedule():
  _, lr_fn = build(schedule_values=dict(name="cosine", warmup_steps=20), name="sgd")
  assert_values(lr_fn, {0: 0.0, 10: LR / 2, 20: LR, 60: LR / 2})


def test_updates_follow_the_schedule():
  tx, _ = build(schedule_values=dict(name="constant", warmup_steps=4), name="sgd", lr=1.0)
  params = {"w": jnp.zeros(3)}
  grads = {"w": jnp.ones(3)}
  state = tx.init(params)
  for step in range(6):
    updates, state = tx.update(grads, state, params)
    np.testing.assert_allclose(updates["w"], -min(step / 4, 1.0) * np.ones(3), rtol=1e-6)


def decay_one_step(**optimizer):
  tx, _ = build(**optimizer)
  params = {"kernel": jnp.array([[1.0, -2.0], [4.0, 0.5]]), "bias": jnp.array([3.0, -1.0])}
  zeros = jax.tree.map(jnp.zeros_like, params)
  state = tx.init(params)
  history = [params]
  for _ in range(3):
    updates, state = tx.update(zeros, state, params)
    params = optax.apply_updates(params, updates)
    history.append(params)
  return history


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_weight_decay_is_decoupled_and_scaled_by_lr(name):
  lr, wd = 0.1, 0.5
  history = decay_one_step(name=name, lr=lr, weight_decay=wd)
  for before, after in zip(history, history[1:]):
    np.testing.assert_allclose(after["kernel"], before["kernel"] * (1 - lr * wd), rtol=1e-6)
    np.testing.assert_allclose(after["kernel"] - before["kernel"], -lr * wd * before["kernel"], rtol=1e-5)
  np.testing.assert_allclose(history[1]["kernel"], [[0.95, -1.9], [3.8, 0.475]], rtol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_weight_decay_skips_biases(name):
  history = decay_one_step(name=name, lr=0.1, weight_decay=0.5)
  for params in history:
    np.testing.assert_array_equal(params["bias"], [3.0, -1.0])


def test_weight_decay_bypasses_momentum():
  # With momentum the decay would accumulate (0.05, then 0.05 * 1.9, ...); decoupled it is
  # exactly lr * wd * param each step.
  lr, wd = 0.1, 0.5
  history = decay_one_step(name="sgd", lr=lr, weight_decay=wd, momentum=0.9)
  for before, after in zip(history, history[1:]):
    np.testing.assert_allclose(after["kernel"], before["kernel"] * (1 - lr * wd), rtol=1e-6)


def test_no_weight_decay_by_default():
  history = decay_one_step(name="adamw", lr=0.1)
  np.testing.assert_array_equal(history[-1]["kernel"], history[0]["kernel"])


def test_weight_decay_mask_is_by_rank():
  params = {"scalar": jnp.zeros(()), "bias": jnp.zeros(3), "kernel": jnp.zeros((2, 3)),
            "conv": jnp.zeros((3, 3, 1, 4))}
  assert optim.decay_mask(params) == {"scalar": False, "bias": False, "kernel": True, "conv": True}


def test_grad_clip_norm_bounds_the_sgd_update():
  lr, clip = 0.1, 1.0
  tx, _ = build(name="sgd", lr=lr, grad_clip_norm=clip)
  params = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
  grads = {"w": jnp.full((4, 3), 1e6), "b": jnp.full(3, -1e6)}
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(optax.global_norm(updates)) == pytest.approx(lr * clip, rel=1e-5)
  # Clipping rescales; it keeps the direction.
  np.testing.assert_allclose(updates["w"] / updates["w"][0, 0], np.ones((4, 3)), rtol=1e-6)


def test_grad_clip_norm_leaves_small_gradients_alone():
  tx, _ = build(name="sgd", lr=0.1, grad_clip_norm=10.0)
  params = {"w": jnp.zeros(3)}
  grads = {"w": jnp.array([1.0, -2.0, 2.0])}  # Norm 3.
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], [-0.1, 0.2, -0.2], rtol=1e-6)


def test_adam_with_weight_decay_points_to_adamw():
  with pytest.raises(UserError, match="adamw"):
    build(name="adam", weight_decay=1e-4)


def test_unknown_optimizer_argument_is_named_with_suggestion():
  with pytest.raises(UserError) as err:
    build(name="sgd", momentun=0.9)
  message = str(err.value)
  assert "'optimizer.momentun'" in message
  assert re.search(r"did you mean 'optimizer\.momentum'", message)


def test_argument_of_another_optimizer_is_rejected():
  with pytest.raises(UserError, match="optimizer.b1"):
    build(name="sgd", b1=0.9)


def test_unknown_optimizer_name_raises():
  with pytest.raises(UserError, match="unknown optimizer 'adamm'") as err:
    build(name="adamm")
  assert "did you mean 'adam" in str(err.value)
  assert "sgd" in str(err.value)


def test_optimizer_requires_lr():
  with pytest.raises(UserError, match="optimizer.lr"):
    optim.build(section("optimizer", name="sgd"), section("schedule"), total_steps=TOTAL,
                steps_per_epoch=STEPS_PER_EPOCH, batch_size=BATCH)
