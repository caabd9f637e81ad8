"""The train state and the pure train/eval steps (jit-compiled by the Strategy).

Batches hold the model input under 'image' and one-hot (or multi-hot) targets under
'labels'; evaluation batches also carry the '_mask' of real (1) and padding (0) examples.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from jaxtrain.errors import UserError


def check_batch(batch, where):
  """The steps read 'image' and 'labels': say so at start-up if `where` (a pp) drops them."""
  missing = [key for key in ("image", "labels") if key not in batch]
  if missing:
    raise UserError(f"{where} must leave 'image' (the model input) and 'labels' (one-hot targets) in the "
                    f"batch; it has {', '.join(sorted(k for k in batch if not k.startswith('_')))}")


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array         # Fixed; each step derives its own with fold_in(rng, step).
  model_state: Any       # Mutable collections such as 'batch_stats' ({} if none).


def create_state(model, tx, example_input, seed):
  """A fresh TrainState; pure, so the Strategy can jit it straight into its shardings."""
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))  # Raw uint32 keys checkpoint as plain arrays.
  variables = model.init({"params": init_rng, "dropout": init_rng}, example_input, train=False)
  params = variables.pop("params")
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=train_rng, model_state=dict(variables))


def _accuracy(logits, labels):
  return (jnp.argmax(logits, -1) == jnp.argmax(labels, -1)).astype(jnp.float32)


def _weights(batch, loss):
  """The batch's 'weights' (per example [batch], or per token: the loss's shape), else ones."""
  weights = jnp.asarray(batch.get("weights", 1.0), jnp.float32)
  weights = weights.reshape(weights.shape + (1,) * (loss.ndim - weights.ndim))  # [batch] -> [batch, 1, ...]
  return jnp.broadcast_to(weights, loss.shape)


def make_train_step(model, tx, loss_fn, lr_fn, *, skip_nonfinite=False, accumulate_steps=1, axis_name=None):
  """(state, batch) -> (state, metrics): one optimizer step on the batch's weighted mean loss.

  The loss is sum(loss * weights) / sum(weights) over the whole global batch, however it
  is split: over devices (pmap: `axis_name`, whose sums are added with psum) and over
  `accumulate_steps` microbatches run one after another (lax.scan), whose gradient sums
  are added before the single division. So accumulation equals the large batch, also for
  token-weighted losses. (BatchNorm is the exception: each microbatch, and under pmap each
  device, normalises with its own statistics, and the running averages move once per
  microbatch.) Under pmap each device draws its own dropout masks.

  With `skip_nonfinite`, a step whose loss or gradients are not finite changes nothing
  but the step counter (so the data and RNG move on), and reports `skipped` = 1."""

  def sums(params, model_state, batch, rng):
    """Weighted sums of the loss (differentiated), of correct predictions and of weights."""
    (logits, _), model_state = model.apply(
        {"params": params, **model_state}, batch["image"], train=True,
        rngs={"dropout": rng}, mutable=list(model_state))
    logits = logits.astype(jnp.float32)  # Mixed precision: the loss in float32 whatever the model computes in.
    loss = loss_fn(logits, batch["labels"])
    weights = _weights(batch, loss)
    aux = {"correct": (_accuracy(logits, batch["labels"]) * weights).sum(), "weight": weights.sum()}
    return (loss * weights).sum(), (aux, model_state)

  grad_of_sums = jax.value_and_grad(sums, has_aux=True)

  def accumulated(params, model_state, batch, rng):
    """grad_of_sums over `accumulate_steps` microbatches, one after another, added up."""
    k = accumulate_steps
    # Example j*k + i goes to microbatch i: each device's own rows feed every microbatch.
    micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1), batch)

    def one(carry, inputs):
      i, microbatch = inputs
      total, model_state = carry
      (loss_sum, (aux, model_state)), grads = grad_of_sums(params, model_state, microbatch, jax.random.fold_in(rng, i))
      return (jax.tree.map(jnp.add, total, (loss_sum, aux, grads)), model_state), None

    scalar = jnp.zeros((), jnp.float32)
    zeros = (scalar, {"correct": scalar, "weight": scalar}, jax.tree.map(jnp.zeros_like, params))
    # XLA:CPU runs convolutions inside a loop ~10x slower (134 vs 10-11 ms, digits CNN):
    # unroll there. Elsewhere keep the loop, so only one microbatch's activations are live.
    unroll = k if jax.default_backend() == "cpu" else 1
    ((loss_sum, aux, grads), model_state), _ = jax.lax.scan(
        one, (zeros, model_state), (jnp.arange(k), micro), unroll=unroll)
    return (loss_sum, (aux, model_state)), grads

  def train_step(state, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    if axis_name:  # pmap: each device its own dropout masks.
      rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
    compute = grad_of_sums if accumulate_steps == 1 else accumulated
    (loss_sum, (aux, model_state)), grads = compute(state.params, state.model_state, batch, rng)
    if axis_name:  # pmap: this device's sums -> the global batch's; batch statistics averaged.
      loss_sum, aux, grads = jax.lax.psum((loss_sum, aux, grads), axis_name)
      model_state = jax.tree.map(
          lambda x: jax.lax.pmean(x, axis_name) if jnp.issubdtype(x.dtype, jnp.floating) else x, model_state)
    weight = aux["weight"]
    grads = jax.tree.map(lambda g: g / weight, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              opt_state=opt_state, model_state=dict(model_state))
    metrics = {
        "loss": loss_sum / weight,
        "accuracy": aux["correct"] / weight,
        "grad_norm": optax.global_norm(grads),
        "lr": lr_fn(state.step),
    }
    if skip_nonfinite:
      ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
      unchanged = state.replace(step=state.step + 1)
      new_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, unchanged)
      metrics = {**{k: jnp.where(ok, v, 0.0) for k, v in metrics.items() if k != "lr"},
                 "lr": metrics["lr"], "skipped": 1.0 - ok.astype(jnp.float32)}
    return new_state, metrics

  return train_step


def make_eval_step(model, loss_fn):
  """(state, batch) -> sums over the batch's real examples (padding masked out): weighted
  loss and correct predictions, their weight, and the count of examples."""

  def eval_step(state, batch):
    logits, _ = model.apply({"params": state.params, **state.model_state}, batch["image"], train=False)
    logits = logits.astype(jnp.float32)
    loss = loss_fn(logits, batch["labels"])
    mask = batch["_mask"]
    weights = _weights(batch, loss) * mask.reshape(mask.shape + (1,) * (loss.ndim - 1))
    return {
        "loss_sum": (loss * weights).sum(),
        "correct": (_accuracy(logits, batch["labels"]) * weights).sum(),
        "weight": weights.sum(),
        "count": mask.sum().astype(jnp.int32),
    }

  return eval_step
