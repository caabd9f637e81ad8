"""Log-likelihoods of continuations given contexts, batched by length and compiled once
per length bucket: the scoring of multiple-choice tasks.

    pairs = encode_pairs(tokenizer, [("def add(a, b):", " return a + b")], add_bos=False)
    scorer = Scorer(module, strategy, abstract_variables, context_length=2048)
    scorer.prepare(pairs)                       # compiles every bucket the pairs need
    sums, greedy = scorer.score(variables, pairs)

Each pair is fed as context + continuation, truncated from the left to the model's window
(plus the one token that is only a target), right-padded to its bucket's width; the sum
runs over the continuation's tokens only. Pairs are sorted by length, so a batch holds
rows of about one length and little is padding. A batch holds about `batch_tokens`
tokens, split over the devices as training splits its batches.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrain.errors import UserError


def encode_pairs(tokenizer, requests, add_bos=False):
  """(context ids, continuation ids) of each (context, continuation) text pair, as the
  harness (0.4.13) tokenizes for Hugging Face models: spaces ending the context move to the
  continuation; the whole text is encoded and split after as many tokens as the context
  alone encodes to. An empty context is the one token the harness puts there, BOS (EOS for
  a tokenizer without one); so is one of spaces only. Special tokens spelled in the texts
  ('<|im_end|>') are their ids, as transformers encodes them."""
  bos = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
  prefix = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
  encode = lambda text: list(tokenizer.encode(text, special_tokens=True))  # noqa: E731
  pairs = []
  for context, continuation in requests:
    spaces = len(context) - len(context.rstrip())
    if spaces:
      context, continuation = context[:-spaces], context[-spaces:] + continuation
    if context == "":
      ids = encode(continuation)
      if prefix is None:
        raise UserError("an empty context is scored after the BOS or EOS token, and this tokenizer has neither")
      # A continuation that starts with that token already has its context.
      pairs.append(([ids[0]], ids[1:]) if ids and ids[0] == prefix else ([prefix], ids))
      continue
    whole = bos + encode(context + continuation)
    n = len(bos) + len(encode(context))
    pairs.append((whole[:n], whole[n:]))
  return pairs


def row_of(context_ids, continuation_ids, context_length):
  """(input ids, number of continuation tokens at its end): the last `context_length` + 1
  tokens of context + continuation, without the last (it is only a target)."""
  if not continuation_ids:
    raise UserError("a continuation encodes to no tokens; every choice needs at least one token")
  if len(continuation_ids) > context_length:
    raise UserError(f"a continuation of {len(continuation_ids)} tokens does not fit the model's context of "
                    f"{context_length}")
  whole = (list(context_ids) + list(continuation_ids))[-(context_length + 1):]
  return whole[:-1], len(continuation_ids)


def width_of(n, context_length, smallest=16):
  """The bucket of a row of `n` tokens: the next of 16, 24, 32, 48, 64, 96, ... (powers of
  two and halfway between), at most the window. Halfway steps cut the padding of the
  next_line task's batches from 33% to 26% of their slots, for 3 more compilations."""
  power = 1 << max(0, n - 1).bit_length()
  width = power * 3 // 4 if n <= power * 3 // 4 else power
  return min(context_length, max(smallest, width))


class Scorer:
  """Sums of log-probabilities (and whether each continuation is the greedy one) of
  token pairs, under `module` placed by `strategy`."""

  def __init__(self, module, strategy, abstract_variables, context_length, batch_tokens=8192, pad_id=0):
    self.module, self.strategy = module, strategy
    self.abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                                 abstract_variables)
    self.context_length, self.batch_tokens, self.pad_id = context_length, batch_tokens, pad_id
    self.compiled = {}  # By (rows, width): each bucket compiles once.

  def _rows(self, width):
    """Rows per batch at `width`: about batch_tokens tokens, a multiple of the batch shards."""
    shards = self.strategy.batch_shards
    return max(1, self.batch_tokens // width // shards) * shards

  def plan(self, pairs):
    """[(width, [pair indices])]: the batches, longest rows first."""
    rows = [row_of(c, t, self.context_length) for c, t in pairs]
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    batches, i = [], 0
    while i < len(order):
      width = width_of(len(rows[order[i]][0]), self.context_length)
      size = self._rows(width)
      # Rows that fit a narrower bucket wait for their own: no row pads past twice its length.
      members = [j for j in order[i:i + size] if width_of(len(rows[j][0]), self.context_length) == width]
      batches.append((width, members))
      i += len(members)
    return rows, batches

  def prepare(self, pairs):
    """Compiles the buckets `pairs` need (from abstract variables: no weights needed)."""
    _, batches = self.plan(pairs)
    for width, _ in batches:
      self._compiled(width)

  def _compiled(self, width):
    rows = self._rows(width)
    if (rows, width) not in self.compiled:
      local = rows // self.strategy.process_count
      example = {"tokens": np.zeros((local, width), np.int32), "targets": np.zeros((local, width), np.int32),
                 "weights": np.zeros((local, width), np.float32)}
      self.compiled[rows, width] = self.strategy.compile_eval(self._score_fn, self.abstract, example)
    return self.compiled[rows, width]

  def _score_fn(self, variables, batch):
    logits, _ = self.module.apply(variables, batch["tokens"], train=False)
    logits = logits.astype(jnp.float32)
    targets, weights = batch["targets"], batch["weights"]
    # log p(target) = logit[target] - logsumexp(logits): no [rows, width, vocab] log-softmax.
    picked = jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
    logprobs = picked - jax.nn.logsumexp(logits, -1)
    greedy = (jnp.argmax(logits, -1) == targets) | (weights == 0)
    return {"sum": jnp.sum(logprobs * weights, -1), "greedy": jnp.all(greedy, -1)}

  def score(self, variables, pairs):
    """(float64 [n] sums of log-probabilities, bool [n] greedy) of each pair."""
    rows, batches = self.plan(pairs)
    sums, greedy = np.zeros(len(pairs), np.float64), np.zeros(len(pairs), bool)
    p, count = self.strategy.process_index, self.strategy.process_count
    for width, members in batches:
      compiled = self._compiled(width)
      size = self._rows(width)
      batch = {"tokens": np.full((size, width), self.pad_id, np.int32),
               "targets": np.zeros((size, width), np.int32), "weights": np.zeros((size, width), np.float32)}
      for r, j in enumerate(members):
        ids, n = rows[j]
        whole = list(ids) + list(pairs[j][1][-1:])  # The inputs, then the last target.
        batch["tokens"][r, :len(ids)] = ids
        batch["targets"][r, :len(ids)] = whole[1:]
        batch["weights"][r, len(ids) - n:len(ids)] = 1.0
      local = size // count
      out = jax.device_get(compiled(variables, self.strategy.shard(
          {k: v[p * local:(p + 1) * local] for k, v in batch.items()})))
      sums[members] = np.asarray(out["sum"], np.float64)[:len(members)]
      greedy[members] = np.asarray(out["greedy"])[:len(members)]
    return sums, greedy
