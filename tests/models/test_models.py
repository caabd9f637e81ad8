"""Models built from the `model` config section, and the losses."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxtrain.config import Reader
from jaxtrain.errors import UserError
from jaxtrain import losses
from jaxtrain import models
from jaxtrain.models.cnn import CNN

B, H, W, C = 4, 8, 8, 1
NUM_CLASSES = 5


def section(key, /, **values):
  """A config section read the way train.py reads it: `cfg.<key>`."""
  return getattr(Reader(ml_collections.ConfigDict({key: values})), key)


def build_model(**values):
  return models.build(section("model", **values))


def images(seed=0, batch=B):
  return jax.random.normal(jax.random.PRNGKey(seed), (batch, H, W, C))


def init(model, x):
  return model.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, x, train=False)


class TinyModel(nn.Module):
  """A model outside the registry, named as 'module:attr'."""

  num_classes: int
  scale: float = 1.0

  @nn.compact
  def __call__(self, x, *, train):
    x = x.reshape((x.shape[0], -1)) * self.scale
    return nn.Dense(self.num_classes)(x), {"pre_logits": x}


# ---------------------------------------------------------------------------------------
# Models.
# ---------------------------------------------------------------------------------------


def test_cnn_shapes():
  model = build_model(name="cnn", num_classes=NUM_CLASSES, features=(4, 8), dense=16)
  x = images()
  logits, out = model.apply(init(model, x), x, train=False)
  assert logits.shape == (B, NUM_CLASSES)
  assert out["pre_logits"].shape == (B, 16)


def test_cnn_pools_every_pool_every_blocks():
  model = build_model(name="cnn", num_classes=NUM_CLASSES, features=(2, 2, 2), pool_every=1, dense=3)
  variables = init(model, images())
  # Three 2x2 pools take 8x8 to 1x1, so the dense layer sees 2 features.
  assert variables["params"]["Dense_0"]["kernel"].shape == (1 * 1 * 2, 3)


def test_mlp_shapes():
  model = build_model(name="mlp", num_classes=NUM_CLASSES, hidden=(16, 12))
  x = images()
  logits, out = model.apply(init(model, x), x, train=False)
  assert logits.shape == (B, NUM_CLASSES)
  assert out["pre_logits"].shape == (B, 12)
  assert init(model, x)["params"]["Dense_0"]["kernel"].shape == (H * W * C, 16)


def test_build_passes_the_section_as_arguments():
  model = build_model(name="mlp", num_classes=3, hidden=(7,), dropout=0.25)
  assert isinstance(model, models.mlp.MLP)
  assert (model.num_classes, tuple(model.hidden), model.dropout) == (3, (7,), 0.25)


def test_cnn_with_batch_norm_has_batch_stats():
  model = build_model(name="cnn", num_classes=NUM_CLASSES, features=(4,), dense=8, batch_norm=True)
  variables = init(model, images())
  assert set(variables) == {"params", "batch_stats"}
  assert "bias" not in variables["params"]["Conv_0"]  # The batch norm's offset replaces it.
  x = images()
  (logits, _), updated = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert logits.shape == (B, NUM_CLASSES)
  assert set(updated) == {"batch_stats"}


def test_cnn_without_batch_norm_has_no_batch_stats():
  model = build_model(name="cnn", num_classes=NUM_CLASSES, features=(4,), dense=8, batch_norm=False)
  variables = init(model, images())
  assert set(variables) == {"params"}
  assert "bias" in variables["params"]["Conv_0"]


@pytest.mark.parametrize("model_config", [
    dict(name="mlp", num_classes=NUM_CLASSES, hidden=(32,), dropout=0.5),
    dict(name="cnn", num_classes=NUM_CLASSES, features=(4,), dense=32, dropout=0.5, batch_norm=False),
])
def test_dropout_only_in_train_mode(model_config):
  model = build_model(**model_config)
  x = images()
  variables = init(model, x)

  def run(train, seed):
    logits, out = model.apply(variables, x, train=train, rngs={"dropout": jax.random.PRNGKey(seed)})
    return np.asarray(logits), np.asarray(out["pre_logits"])

  train_a, train_b = run(True, 1), run(True, 2)
  eval_a, eval_b = run(False, 1), run(False, 2)
  assert not np.array_equal(train_a[0], train_b[0])
  # Dropout keeps each pre-logit unit with probability 0.5, scaled by 1 / 0.5.
  kept = train_a[1] != 0
  np.testing.assert_allclose(train_a[1][kept], 2 * eval_a[1][kept], rtol=1e-5)
  assert 0.3 < kept[eval_a[1] != 0].mean() < 0.7
  np.testing.assert_array_equal(eval_a[0], eval_b[0])
  np.testing.assert_array_equal(eval_a[0], np.asarray(model.apply(variables, x, train=False)[0]))


def test_no_dropout_means_train_mode_is_deterministic():
  model = build_model(name="mlp", num_classes=NUM_CLASSES, hidden=(32,))
  x = images()
  variables = init(model, x)
  a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})[0]
  b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})[0]
  np.testing.assert_array_equal(a, b)


def test_unknown_model_argument_is_named_with_suggestion():
  with pytest.raises(UserError) as err:
    build_model(name="mlp", num_classes=NUM_CLASSES, hiden=(8,))
  message = str(err.value)
  assert "'model.hiden'" in message
  assert re.search(r"did you mean 'model\.hidden'", message)


def test_flax_module_fields_are_not_model_arguments():
  with pytest.raises(UserError, match="model.parent"):
    build_model(name="mlp", num_classes=NUM_CLASSES, parent=0)


def test_unknown_model_name_raises_with_suggestion():
  with pytest.raises(UserError, match="unknown model 'cnnn'") as err:
    build_model(name="cnnn", num_classes=NUM_CLASSES)
  assert "did you mean 'cnn'" in str(err.value)
  assert "mlp" in str(err.value)


def test_model_by_module_path():
  model = build_model(name=f"{__name__}:TinyModel", num_classes=NUM_CLASSES, scale=2.0)
  assert isinstance(model, TinyModel)
  x = images()
  logits, out = model.apply(init(model, x), x, train=False)
  assert logits.shape == (B, NUM_CLASSES)
  np.testing.assert_allclose(out["pre_logits"], 2.0 * x.reshape(B, -1))


def test_model_by_module_path_checks_arguments():
  with pytest.raises(UserError, match="model.scal") as err:
    build_model(name=f"{__name__}:TinyModel", num_classes=NUM_CLASSES, scal=2.0)
  assert re.search(r"did you mean 'model\.scale'", str(err.value))


def test_model_by_module_path_with_missing_attribute():
  with pytest.raises(UserError, match="has no 'Missing'"):
    build_model(name=f"{__name__}:Missing", num_classes=NUM_CLASSES)


def test_model_by_unimportable_module():
  with pytest.raises(UserError, match="cannot import module 'no_such_module_xyz'"):
    build_model(name="no_such_module_xyz:Net", num_classes=NUM_CLASSES)


def test_missing_required_model_argument_is_a_user_error():
  with pytest.raises(UserError, match="model.num_classes"):
    build_model(name="mlp", hidden=(8,))  # No num_classes.


def test_model_path_to_a_non_module_is_a_user_error():
  with pytest.raises(UserError, match="images"):
    build_model(name=f"{__name__}:images", num_classes=NUM_CLASSES)


def test_registered_model_builds_by_name():
  name = f"tiny_{id(TinyModel)}"  # Unique: registering a name twice is an error.
  models.MODELS.register(name)(TinyModel)
  assert name in models.MODELS.names()
  assert isinstance(build_model(name=name, num_classes=2), TinyModel)
  with pytest.raises(ValueError, match="registered twice"):
    models.MODELS.register(name)(TinyModel)


# ---------------------------------------------------------------------------------------
# Losses.
# ---------------------------------------------------------------------------------------

LOGITS = jnp.array([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
LABELS = jnp.array([1, 2])
ONEHOT = jax.nn.one_hot(LABELS, 3)


def build_loss(**values):
  return losses.build(section("loss", **values))


def test_softmax_xent_is_minus_log_softmax_of_true_class():
  loss = build_loss(name="softmax_xent")(LOGITS, ONEHOT)
  logits = np.asarray(LOGITS, np.float64)
  log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = -log_softmax[np.arange(2), np.asarray(LABELS)]
  assert loss.shape == (2,)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_label_smoothing_follows_optax_smooth_labels():
  smoothing = 0.2
  loss = build_loss(name="softmax_xent", label_smoothing=smoothing)(LOGITS, ONEHOT)
  smoothed = optax.smooth_labels(ONEHOT, smoothing)
  np.testing.assert_allclose(smoothed[0], [0.2 / 3, 0.8 + 0.2 / 3, 0.2 / 3], rtol=1e-6)
  expected = -(smoothed * jax.nn.log_softmax(LOGITS)).sum(-1)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  plain = build_loss(name="softmax_xent")(LOGITS, ONEHOT)
  assert not np.allclose(loss, plain)


def test_sigmoid_xent_sums_binary_cross_entropies_over_classes():
  labels = jnp.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])  # Multi-hot.
  loss = build_loss(name="sigmoid_xent")(LOGITS, labels)
  x, y = np.asarray(LOGITS, np.float64), np.asarray(labels, np.float64)
  p = 1 / (1 + np.exp(-x))
  expected = -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(-1)
  assert loss.shape == (2,)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_sigmoid_xent_label_smoothing_moves_targets_towards_half():
  labels = jnp.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
  loss = build_loss(name="sigmoid_xent", label_smoothing=0.2)(LOGITS, labels)
  targets = labels * 0.8 + 0.1
  expected = optax.sigmoid_binary_cross_entropy(LOGITS, targets).sum(-1)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_unknown_loss_argument_raises():
  with pytest.raises(UserError) as err:
    build_loss(name="softmax_xent", label_smoothin=0.1)
  message = str(err.value)
  assert "'loss.label_smoothin'" in message
  assert re.search(r"did you mean 'loss\.label_smoothing'", message)


def test_unknown_loss_name_raises():
  with pytest.raises(UserError, match="unknown loss 'softmax'") as err:
    build_loss(name="softmax")
  assert "softmax_xent" in str(err.value)


def test_cnn_cpu_options_compute_the_same_function_with_the_same_parameters():
  """conv='im2col' (one matmul per convolution) and pool='reshape' (a max over a reshape):
  faster on XLA:CPU, the same params, outputs and gradients (to float rounding)."""
  x = jax.random.normal(jax.random.key(0), (16, 8, 8, 1))
  default, fast = CNN(NUM_CLASSES), CNN(NUM_CLASSES, conv="im2col", pool="reshape")
  variables = default.init(jax.random.key(1), x, train=False)
  assert jax.tree.map(jnp.shape, fast.init(jax.random.key(1), x, train=False)) == jax.tree.map(jnp.shape, variables)
  loss = lambda model: lambda params: model.apply({**variables, "params": params}, x, train=False)[0].sum()  # noqa: E731
  np.testing.assert_allclose(fast.apply(variables, x, train=False)[0], default.apply(variables, x, train=False)[0],
                             atol=1e-5)
  for a, b in zip(jax.tree.leaves(jax.grad(loss(fast))(variables["params"])),
                  jax.tree.leaves(jax.grad(loss(default))(variables["params"]))):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
  with pytest.raises(UserError, match=r"model.pool must be one of 'window', 'reshape', got 'avg'"):
    CNN(NUM_CLASSES, pool="avg")
