"""The task contract in the train step: integer labels, multi-hot accuracy, the inputs a
task reads; and the non-finite checks of a step (its gradients, its new parameters)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxtrain.config import Reader
from jaxtrain.errors import UserError
from jaxtrain import losses
from jaxtrain import step as step_lib
from jaxtrain import tasks
from test_step import MLP, NUM_CLASSES, build, copy, make_batch


def classification(**task):
  return tasks.build(Reader(ml_collections.ConfigDict({"task": {"name": "classification", **task},
                                                       "loss": {"name": "sigmoid_xent"}})))


def test_multi_hot_accuracy_is_precision_at_1():
  """Defect 1: argmax(logits) == argmax(labels) scored a top class that is any positive
  label but the first as wrong."""
  logits = jnp.array([[0.0, 1.0, 3.0], [2.0, 0.0, 1.0], [0.0, 5.0, 1.0]])
  labels = jnp.array([[0.0, 1.0, 1.0], [0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])  # Top classes 2, 0, 1.
  units = classification().units(logits, {"labels": labels})
  np.testing.assert_array_equal(units["correct"], [1.0, 0.0, 0.0])


def test_one_hot_and_smoothed_labels_score_the_true_class():
  logits = jnp.array([[0.0, 1.0, 3.0], [2.0, 0.0, 1.0]])
  smoothed = jnp.array([[0.05, 0.05, 0.9], [0.05, 0.9, 0.05]])  # onehot(on=0.9, off=0.05)
  np.testing.assert_array_equal(classification().units(logits, {"labels": smoothed})["correct"], [1.0, 0.0])


def test_integer_labels_equal_one_hot_labels_in_the_train_step():
  model, tx, task, lr_fn, state = build(MLP)
  batch = make_batch()
  ids = {**batch, "labels": np.argmax(batch["labels"], -1).astype(np.int32)}
  train_step = jax.jit(step_lib.make_train_step(model, task, tx, lr_fn))
  (onehot_state, onehot), (ids_state, by_id) = train_step(copy(state), batch), train_step(copy(state), ids)
  for key in ("loss", "accuracy", "grad_norm"):
    np.testing.assert_allclose(float(by_id[key]), float(onehot[key]), rtol=1e-6, err_msg=key)
  for a, b in zip(jax.tree.leaves(onehot_state.params), jax.tree.leaves(ids_state.params), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_integer_labels_with_label_smoothing_equal_smoothed_one_hot():
  logits = jnp.array([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
  ids = jnp.array([1, 2])
  smoothed = losses.softmax_xent(logits, jax.nn.one_hot(ids, 3), label_smoothing=0.2)
  np.testing.assert_allclose(losses.softmax_xent(logits, ids, label_smoothing=0.2), smoothed, rtol=1e-6)


def test_a_task_reads_the_inputs_it_is_told_to():
  task = classification(inputs={"x": "pixels"}, labels="digit")
  args, kwargs = task.model_inputs({"pixels": 1, "digit": 2, "other": 3})
  assert args == [] and kwargs == {"x": 1}
  with pytest.raises(UserError, match=r"input.pp must leave 'digit' \(the labels \(task.labels\)\) in the batch; "
                                      r"it has pixels$"):
    task.check_batch({"pixels": 1}, "input.pp")


class SqrtOfAParameter(nn.Module):
  """A finite loss whose gradient is infinite at the start: d sqrt(w)/dw at w = 0."""

  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x, *, train):
    w = self.param("w", nn.initializers.zeros, (self.num_classes,))
    return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1))) + jnp.sqrt(w), {}


def test_a_finite_loss_with_infinite_gradients_is_reported_by_the_grad_norm():
  """Defect 3: the loop checked only the loss; the step reports what it needs to check."""
  _, tx, task, lr_fn, _ = build(MLP)
  model = SqrtOfAParameter()
  state = step_lib.create_state(model, tx, ([make_batch()["image"][:1]], {}), 0)
  _, metrics = jax.jit(step_lib.make_train_step(model, task, tx, lr_fn))(state, make_batch())
  assert np.isfinite(float(metrics["loss"])) and not np.isfinite(float(metrics["grad_norm"]))
  assert not np.isfinite(float(metrics["param_norm"]))  # Adam's update of w: inf / inf.


def test_param_norm_is_finite_for_huge_finite_params():
  """A plain global norm overflows float32 past ~1.8e19 and would pass for divergence."""
  tree = {"a": jnp.full((3,), 1e30, jnp.float32), "b": jnp.zeros((2,), jnp.float32)}
  assert float(step_lib._norm(tree)) == pytest.approx(np.sqrt(3) * 1e30, rel=1e-5)
  assert np.isnan(float(step_lib._norm({"a": jnp.array([1.0, np.inf])})))
  assert float(step_lib._norm({"a": jnp.zeros(3)})) == 0.0


def optimizer_counts(opt_state):
  return [int(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(opt_state)
          if getattr(path[-1], "name", None) == "count"]


def test_a_skipped_step_moves_the_optimizer_schedule_with_the_step():
  """Defect 4: a skipped step kept optax's counts, so its schedule fell behind state.step
  and the logged lr (the schedule at state.step) was never the one applied."""
  model, tx, task, lr_fn, state = build(MLP, schedule={"name": "cosine", "warmup_steps": 4})
  step = jax.jit(step_lib.make_train_step(model, task, tx, lr_fn, skip_nonfinite=True))
  batch = make_batch()
  bad = {**batch, "image": np.full_like(batch["image"], np.nan)}
  state, _ = step(state, batch)
  state, metrics = step(state, bad)
  assert float(metrics["skipped"]) == 1.0
  assert optimizer_counts(state.opt_state) and set(optimizer_counts(state.opt_state)) == {2}
  # The next update is the schedule's at step 2, as logged, not at step 1: the update
  # from the same params and moments with lr_fn(1) would differ.
  after, logged = step(copy(state), batch)
  assert float(logged["lr"]) == pytest.approx(float(lr_fn(2)))
  behind = state.replace(opt_state=jax.tree_util.tree_map_with_path(
      lambda p, x: x - 1 if getattr(p[-1], "name", None) == "count" else x, state.opt_state))
  lagging, _ = step(behind, batch)
  assert not np.allclose(np.asarray(after.params["head"]["kernel"]), np.asarray(lagging.params["head"]["kernel"]))
