"""The train state and the pure train and evaluation steps (compiled by the Strategy).

What the model reads from a batch, what its loss compares and which metrics follow is the
task's (jaxtrain/tasks.py); the steps only add up its weighted sums. Evaluation batches
also carry the '_mask' of real (1) and padding (0) examples.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array         # Fixed; each step derives its own with fold_in(rng, step).
  model_state: Any       # Mutable collections such as 'batch_stats' ({} if none).


def init_variables(model, example_inputs, seed):
  """The model's variables {'params': ..., 'batch_stats': ...} for `example_inputs`, an
  (args, kwargs) pair as a task's `model_inputs` gives; pure (jit it into shardings)."""
  init_rng, _ = jax.random.split(jax.random.PRNGKey(seed))
  args, kwargs = example_inputs
  return dict(model.init({"params": init_rng, "dropout": init_rng}, *args, **kwargs, train=False))


def create_state(model, tx, example_inputs, seed):
  """A fresh TrainState; pure, so the Strategy can jit it straight into its shardings."""
  _, train_rng = jax.random.split(jax.random.PRNGKey(seed))  # Raw uint32 keys checkpoint as plain arrays.
  variables = init_variables(model, example_inputs, seed)
  params = variables.pop("params")
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=train_rng, model_state=variables)


def variables_of(state):
  """What evaluation needs of a TrainState: the model's variables, not the optimizer."""
  return {"params": state.params, **state.model_state}


def apply(model, task, variables, batch, **kwargs):
  """The model on the task's inputs of `batch`: (logits, out)."""
  args, inputs = task.model_inputs(batch)
  return model.apply(variables, *args, **inputs, **kwargs)


def weighted_sums(task, logits, batch, mask=None):
  """The task's units times the batch's weights (and `mask`), summed; and 'weight', their sum."""
  units = task.units(logits.astype(jnp.float32), batch)  # Mixed precision: losses in float32.
  weights = _weights(batch, units["loss"])
  if mask is not None:
    weights = weights * mask.reshape(mask.shape + (1,) * (weights.ndim - 1))
  sums = {name: (value * weights).sum() for name, value in units.items()}
  sums["weight"] = weights.sum()
  return sums


# Tokens per chunk of scored_sums, all rows together: 128 x 49,152 float32 logits (SmolLM2)
# are 25 MB. A row's part of a chunk is at least 8 tokens.
SCORED_CHUNK = 128


def splits_head(model, task):
  """Whether the steps compute logits at the scored tokens only (scored_sums)."""
  return getattr(task, "scores_positions", False) and getattr(model, "splits_head", False)


def scored_sums(task, states, unembed, batch, mask=None):
  """weighted_sums with the logits computed only where tokens weigh something, from final
  states [B, T, dim] and the model's `unembed` (models/__init__.py). In each row the scored
  tokens are moved to the front, in order; the rows are cut into chunks along T, and a
  chunk where no row has a scored token computes nothing (lax.cond). Rows stay rows, so a
  batch sharded over devices stays sharded. Each chunk's logits are recomputed in the
  backward pass rather than kept. The task's units must be per token, as NextToken's are.
  Why: a chat fine-tune scores the replies alone (21% of the email assistant's tokens),
  and the head of a small model is a large share of its work (SmolLM2-135M: 57 of 269
  MFLOPs per token forward, and a softmax over 49,152 ids)."""
  b, t = states.shape[:2]
  weights = _weights(batch, jnp.zeros((b, t)))
  if mask is not None:
    weights = weights * mask[:, None]
  c = min(t, max(8, SCORED_CHUNK // b))
  scored = weights != 0  # Token i of a row goes to to[i]: the scored first, each part in order.
  to = jnp.where(scored, jnp.cumsum(scored, 1) - 1, scored.sum(1, keepdims=True) + jnp.cumsum(~scored, 1) - 1)
  order = jnp.zeros((b, t), jnp.int32).at[jnp.arange(b)[:, None], to].set(jnp.arange(t, dtype=jnp.int32))

  def chunked(x):  # [B, T, ...] -> [chunks, B, c, ...], each row's scored tokens first.
    x = jnp.take_along_axis(x, order.reshape((b, t) + (1,) * (x.ndim - 2)), axis=1)
    x = jnp.pad(x, [(0, 0), (0, -t % c)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape((b, -1, c) + x.shape[2:]), 1, 0)

  per_token = {k: chunked(jnp.broadcast_to(v[:, None], (b, t)) if v.shape == (b,) else v)
               for k, v in batch.items() if v.shape[:2] == (b, t) or v.shape == (b,)}
  others = {k: v for k, v in batch.items() if k not in per_token}

  def chunk_sums(inputs):
    x, w, part = inputs
    units = lambda: task.units(unembed(x), {**others, **part})  # noqa: E731
    zeros = jax.tree.map(lambda u: jnp.zeros((), jnp.float32), jax.eval_shape(units))
    return jax.lax.cond(jnp.any(w != 0), lambda: {k: (u * w).sum() for k, u in units().items()}, lambda: zeros)

  sums = jax.lax.map(jax.checkpoint(chunk_sums), (chunked(states), chunked(weights), per_token))
  sums = {name: value.sum() for name, value in sums.items()}
  sums["weight"] = weights.sum()
  return sums


def _weights(batch, loss):
  """The batch's 'weights' (per example [batch], or per token: the loss's shape), else ones."""
  weights = jnp.asarray(batch.get("weights", 1.0), jnp.float32)
  weights = weights.reshape(weights.shape + (1,) * (loss.ndim - weights.ndim))  # [batch] -> [batch, 1, ...]
  return jnp.broadcast_to(weights, loss.shape)


def abstract_params(model, example_inputs, seed):
  """The shapes of the model's params, computing nothing (what optim.param_groups reads)."""
  return jax.eval_shape(lambda: init_variables(model, example_inputs, seed))["params"]


def make_train_step(model, task, tx, lr_fn, *, skip_nonfinite=False, accumulate_steps=1, axis_name=None,
                    trainable=None):
  """(state, batch) -> (state, metrics): one optimizer step on the batch's weighted mean loss.

  The loss is sum(loss * weights) / sum(weights) over the whole global batch, however it
  is split: over devices (pmap: `axis_name`, whose sums are added with psum) and over
  `accumulate_steps` microbatches run one after another (lax.scan), whose gradient sums
  are added before the single division. So accumulation equals the large batch, also for
  token-weighted losses. (BatchNorm is the exception: each microbatch, and under pmap each
  device, normalises with its own statistics, and the running averages move once per
  microbatch.) Under pmap each device draws its own dropout masks.

  With `skip_nonfinite`, a step whose loss, gradients or new parameters are not finite
  changes nothing but the step counter (so the data and RNG move on) and the optimizer's
  step counts (so its schedule stays that of `state.step`, the one logged), and reports
  `skipped` = 1.

  `trainable` (a tree of bools like the params, as optim.param_groups gives; None: all)
  leaves the other params out of the differentiation, so XLA computes no gradient for
  them (nor sums them over devices): `tx` must give them zero updates, and they are
  carried over unchanged, bit for bit. Gradient norms and clipping see trainable params only.
  Measured on the digits CNN (151,402 params, batch 128, adamw; 2-core CPU, 2026-11-24),
  everything frozen but the head (1,290 params) against nothing frozen: 300 vs 900 MFLOPs
  per step, compiled temporaries 3.2 vs 23.2 MB, optimizer state 10 KB vs 1.2 MB, step
  3.9 vs 22.6 ms. An lr_mult of 0 instead of freezing saves none of it (21.5 ms)."""

  split = splits_head(model, task)

  def sums(trained, frozen, model_state, batch, rng):
    """The task's weighted sums; the loss's is differentiated w.r.t. `trained`."""
    params = trained if trainable is None else _merge(trainable, trained, frozen)
    head = {"head": False} if split else {}
    (logits, out), model_state = apply(model, task, {"params": params, **model_state}, batch, train=True,
                                       rngs={"dropout": rng}, mutable=list(model_state), **head)
    totals = scored_sums(task, out["pre_logits"], out["unembed"], batch) if split else \
        weighted_sums(task, logits, batch)
    return totals["loss"], (totals, model_state)

  grad_of_sums = jax.value_and_grad(sums, has_aux=True)

  def accumulated(params, frozen, model_state, batch, rng):
    """grad_of_sums over `accumulate_steps` microbatches, one after another, added up."""
    k = accumulate_steps
    # Example j*k + i goes to microbatch i: each device's own rows feed every microbatch.
    micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1), batch)

    def one(carry, inputs):
      i, microbatch = inputs
      total, model_state = carry
      (loss_sum, (aux, model_state)), grads = grad_of_sums(params, frozen, model_state, microbatch,
                                                           jax.random.fold_in(rng, i))
      return (jax.tree.map(jnp.add, total, (loss_sum, aux, grads)), model_state), None

    first = jax.tree.map(lambda x: x[0], micro)
    (_, (aux_shapes, _)), _ = jax.eval_shape(grad_of_sums, params, frozen, model_state, first, rng)
    scalar = jnp.zeros((), jnp.float32)
    zeros = (scalar, jax.tree.map(jnp.zeros_like, aux_shapes), jax.tree.map(jnp.zeros_like, params))
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
    trained, frozen = (state.params, None) if trainable is None else _split(trainable, state.params)
    (loss_sum, (aux, model_state)), grads = compute(trained, frozen, state.model_state, batch, rng)
    if axis_name:  # pmap: this device's sums -> the global batch's; batch statistics averaged.
      loss_sum, aux, grads = jax.lax.psum((loss_sum, aux, grads), axis_name)
      model_state = jax.tree.map(
          lambda x: jax.lax.pmean(x, axis_name) if jnp.issubdtype(x.dtype, jnp.floating) else x, model_state)
    del loss_sum  # aux holds it too.
    grads = jax.tree.map(lambda g: g / aux["weight"], grads)
    # Frozen params: zeros for tx's set_to_zero (which reads only their shapes; XLA drops
    # them), and the old arrays themselves afterwards, not old + 0 (-0.0 + 0.0 is +0.0).
    full_grads = grads if trainable is None else _merge(trainable, grads, jax.tree.map(jnp.zeros_like, frozen))
    updates, opt_state = tx.update(full_grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if trainable is not None:
      params = _merge(trainable, params, state.params)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, model_state=dict(model_state))
    metrics = {
        **task.metrics(aux),
        "grad_norm": optax.global_norm(grads),
        # Of the new params: the loop stops on a non-finite one before saving or evaluating them.
        "param_norm": _norm(params),
        "lr": lr_fn(state.step),
    }
    if skip_nonfinite:
      ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"]) & jnp.isfinite(metrics["param_norm"])
      unchanged = state.replace(step=state.step + 1, opt_state=_counts_from(opt_state, state.opt_state))
      new_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, unchanged)
      metrics = {**{k: jnp.where(ok, v, 0.0) for k, v in metrics.items() if k != "lr"},
                 "lr": metrics["lr"], "skipped": 1.0 - ok.astype(jnp.float32)}
    return new_state, metrics

  return train_step


def _split(trainable, params):
  """(trainable params, frozen params): trees like `params` with None in the other's places."""
  pick = lambda keep: jax.tree.map(lambda t, p: p if t == keep else None, trainable, params)
  return pick(True), pick(False)


def _merge(trainable, trained, frozen):
  """One tree from `_split`'s two (or any two trees like the params)."""
  return jax.tree.map(lambda t, a, b: a if t else b, trainable, trained, frozen)


def _norm(tree):
  """The global norm, NaN if an element is not finite, and finite for any finite tree:
  scaled by the largest element first (squares of finite float32 values above ~1.8e19
  would overflow to inf and pass for divergence)."""
  leaves = jax.tree.leaves(tree)
  scale = jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in leaves]))
  scale = jnp.where(scale > 0, scale, 1.0)  # An all-zero tree (NaN propagates through the max).
  return scale * jnp.sqrt(sum(jnp.sum(jnp.square(x / scale)) for x in leaves))


def _counts_from(new_opt_state, old_opt_state):
  """The old optimizer state with the new step counts (optax's `count` fields: schedules,
  Adam's bias correction): a skipped step leaves the moments alone, not the clock."""
  def pick(path, new, old):
    last = path[-1] if path else None
    return new if getattr(last, "name", None) == "count" else old
  return jax.tree_util.tree_map_with_path(pick, new_opt_state, old_opt_state)


def make_eval_sums(model, task):
  """(variables, batch) -> the task's weighted sums over the batch's real examples
  (padding masked out), their weight, and 'count', the number of real examples."""

  split = splits_head(model, task)

  def eval_sums(variables, batch):
    if split:
      _, out = apply(model, task, variables, batch, train=False, head=False)
      sums = scored_sums(task, out["pre_logits"], out["unembed"], batch, mask=batch["_mask"])
    else:
      logits, _ = apply(model, task, variables, batch, train=False)
      sums = weighted_sums(task, logits, batch, mask=batch["_mask"])
    sums["count"] = batch["_mask"].sum().astype(jnp.int32)
    return sums

  return eval_sums
