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


def make_train_step(model, tx, loss_fn, lr_fn, skip_nonfinite=False):
  """(state, batch) -> (state, metrics): one optimizer step on the batch's mean loss.

  With `skip_nonfinite`, a step whose loss or gradients are not finite changes nothing
  but the step counter (so the data and RNG move on), and reports `skipped` = 1."""

  def train_step(state, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    mutable = list(state.model_state)

    def loss_of(params):
      (logits, _), model_state = model.apply(
          {"params": params, **state.model_state}, batch["image"], train=True,
          rngs={"dropout": rng}, mutable=mutable)
      return loss_fn(logits, batch["labels"]).mean(), (logits, model_state)

    (loss, (logits, model_state)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              opt_state=opt_state, model_state=dict(model_state))
    metrics = {
        "loss": loss,
        "accuracy": _accuracy(logits, batch["labels"]).mean(),
        "grad_norm": optax.global_norm(grads),
        "lr": lr_fn(state.step),
    }
    if skip_nonfinite:
      ok = jnp.isfinite(loss) & jnp.isfinite(metrics["grad_norm"])
      unchanged = state.replace(step=state.step + 1)
      new_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, unchanged)
      metrics = {**{k: jnp.where(ok, v, 0.0) for k, v in metrics.items() if k != "lr"},
                 "lr": metrics["lr"], "skipped": 1.0 - ok.astype(jnp.float32)}
    return new_state, metrics

  return train_step


def make_eval_step(model, loss_fn):
  """(state, batch) -> sums over the batch's real examples (padding masked out)."""

  def eval_step(state, batch):
    logits, _ = model.apply({"params": state.params, **state.model_state}, batch["image"], train=False)
    mask = batch["_mask"]
    return {
        "loss_sum": (loss_fn(logits, batch["labels"]) * mask).sum(),
        "correct": (_accuracy(logits, batch["labels"]) * mask).sum().astype(jnp.int32),
        "count": mask.sum().astype(jnp.int32),
    }

  return eval_step
