"""Sampling from a decoder language model with a KV cache, compiled once per shape bucket.

    sampler = Sampler(module, variables, eos_ids=[2], pad_id=0)
    rows = sampler.generate([[1, 5, 9], [1, 7]], max_new_tokens=64, temperature=0.8, top_p=0.95)

The prompts are left-padded to one length, so they all end at the same slot of the cache:
one prefill call writes their keys and values and chooses the first new token; then a
compiled loop decodes up to `chunk` tokens per call, each step feeding the last token of
every row at position (slot - its padding) and choosing the next. n new tokens take n - 1
decode steps: the loop's bound is an argument, so the last call stops at max_new_tokens,
and it stops as soon as every row has chosen an EOS. Between calls the host checks the
rows against `stop` (e.g. a stop string), so such a stop wastes at most one chunk. Shapes
are bucketed (batch and prompt length to powers of two, new tokens to multiples of
`chunk`): prompts of 5 and 12 tokens run the same compiled code, and every call of one
generate the same decode loop. The model must accept the `cache`, `cache_index`,
`key_valid` and `only_last` arguments of `jaxtrain.models.llama.Llama`.
"""

import math

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from jaxtrain.errors import UserError


def bucket(n, smallest=16):
  """The power of two at least `n` (and `smallest`): the shapes we compile for."""
  return max(smallest, 1 << max(0, int(n) - 1).bit_length())


class Sampler:
  """Greedy (temperature 0), temperature, top-k and top-p sampling, seeded."""

  def __init__(self, module, variables, *, eos_ids=(), pad_id=None, chunk=32, cache_dtype=None):
    self.module = module
    self.variables = variables
    self.eos_ids = tuple(int(i) for i in eos_ids)  # Llama 3 ends a turn with any of three.
    self.pad_id = 0 if pad_id is None else pad_id
    self.chunk = chunk
    self.cache_dtype = cache_dtype
    self.traces = 0  # Times a function was traced (compiled): the tests count them.
    self.decode_steps = 0  # Decode steps (forward calls after the prefill) the last generate ran.
    self._prefills, self._decodes = {}, {}  # Compiled, by shape bucket (and sampling mode).

  def prepare(self, variables, lengths, max_new_tokens, *, temperature=0.0, top_k=None, top_p=None):
    """Compiles (once) what `generate` runs for prompts of these `lengths`: `variables` may
    be abstract (ShapeDtypeStructs with shardings), so an evaluator compiles at start-up.
    Returns the shapes: (batch, prompt width, decode steps, sampling mode)."""
    if temperature < 0 or (top_p is not None and not 0 < top_p <= 1) or (top_k is not None and top_k < 1):
      raise UserError(f"sampling needs temperature >= 0, 0 < top_p <= 1 and top_k >= 1; got temperature={temperature}, "
                      f"top_p={top_p}, top_k={top_k}")
    shape = (bucket(len(lengths), 1), bucket(max(lengths)), max(1, -(-max_new_tokens // self.chunk)) * self.chunk)
    mode = (temperature == 0, top_k is not None, top_p is not None and top_p < 1)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), variables)
    key = shape + (mode, self.eos_ids)  # The prefill chooses the first token: it depends on both too.
    scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype)  # noqa: E731
    if key not in self._prefills:
      batch, width, steps = shape
      ints, flags = jax.ShapeDtypeStruct((batch,), jnp.int32), jax.ShapeDtypeStruct((batch,), jnp.bool_)
      self._prefills[key] = jax.jit(self._prefill_fn, static_argnames=("steps", "mode")).lower(
          abstract, jax.ShapeDtypeStruct((batch, width), jnp.int32), ints, flags, scalar(jnp.int32),
          scalar(jnp.float32), scalar(jnp.int32), scalar(jnp.float32), steps=steps, mode=mode).compile()
    if key not in self._decodes:
      state = self._prefills[key].out_info
      self._decodes[key] = jax.jit(self._decode_fn, static_argnames=("mode",), donate_argnums=(1,)).lower(
          abstract, state, scalar(jnp.int32), mode=mode).compile()
    return shape + (mode,)

  def generate(self, prompts, max_new_tokens, *, temperature=0.0, top_k=None, top_p=None, seed=0, stop=None,
               variables=None):
    """New token ids for each prompt (a list of int lists), EOS and padding cut off.

    `stop(row_ids) -> bool` ends a row early (its ids are then cut by the caller).
    `variables`: other values of the model's variables (an evaluator's, during training)."""
    variables = self.variables if variables is None else variables
    batch, width, steps, mode = self.prepare(variables, list(map(len, prompts)), max_new_tokens,
                                             temperature=temperature, top_k=top_k, top_p=top_p)
    count = len(prompts)
    tokens = np.full((batch, width), self.pad_id, np.int32)
    pad = np.full((batch,), width - 1, np.int32)  # Rows beyond the prompts: one pad token each.
    for row, ids in enumerate(prompts):
      tokens[row, width - len(ids):] = ids
      pad[row] = width - len(ids)
    key = (batch, width, steps, mode, self.eos_ids)
    state = self._prefills[key](
        variables, tokens, pad, np.arange(batch) >= count, np.int32(seed), np.float32(max(temperature, 1e-6)),
        np.int32(top_k or 1), np.float32(top_p or 1.0))
    chosen = 1  # Tokens chosen so far (at most: the loop also stops when every row has its EOS).
    while chosen < max_new_tokens:
      chosen = min(chosen + self.chunk, max_new_tokens)
      state = self._decodes[key](variables, state, np.int32(chosen))
      if all(self._ended(row, stop) for row in np.asarray(state["out"])[:count, :chosen]):
        break
    self.decode_steps = int(state["index"]) - width  # What the last generate ran after the prefill.
    return [self._cut(row) for row in np.asarray(state["out"])[:count, :min(chosen, max_new_tokens)]]

  def _ended(self, row, stop):
    return any(i in self.eos_ids for i in row) or (stop is not None and stop(self._cut(row)))

  def _cut(self, row):
    row = list(map(int, row))
    return next((row[:at] for at, i in enumerate(row) if i in self.eos_ids), row)

  # ---- Compiled ------------------------------------------------------------------------

  def _forward(self, variables, tokens, positions, cache, index, key_valid):
    logits, out = self.module.apply(variables, tokens, train=False, positions=positions, cache=cache,
                                    cache_index=index, key_valid=key_valid, only_last=True)
    return logits[:, -1], out["cache"]

  def _prefill_fn(self, variables, tokens, pad, done, seed, temperature, top_k, top_p, steps, mode):
    """The prompts' keys and values into a new cache and the first new token: the state the
    decode loop carries (`token`, each row's last, is fed at slot `index`)."""
    self.traces += 1
    batch, width = tokens.shape
    positions = jnp.maximum(jnp.arange(width)[None, :] - pad[:, None], 0)
    cache = self.module.init_cache(batch, width + steps, self.cache_dtype)
    # The cache's valid slots: made once, here, and whatever the model's cache layout.
    key_valid = jnp.arange(width + steps)[None, :] >= pad[:, None]
    logits, cache = self._forward(variables, tokens, positions, cache, 0, key_valid)
    state = dict(cache=cache, pad=pad, key_valid=key_valid, index=jnp.int32(width), step=jnp.int32(0), done=done,
                 out=jnp.zeros((batch, steps), jnp.int32), key=jax.random.key(seed), temperature=temperature,
                 top_k=top_k, top_p=top_p)
    return self._choose_next(state, logits, mode)

  def _choose_next(self, s, logits, mode):
    """The token of step s['step'] from `logits` (the pad for ended rows), written down."""
    token = choose(logits, jax.random.fold_in(s["key"], s["step"]), s["temperature"], s["top_k"], s["top_p"], *mode)
    token = jnp.where(s["done"], self.pad_id, token)
    out = jax.lax.dynamic_update_slice(s["out"], token[:, None], (0, s["step"]))
    eos_ids = jnp.asarray(self.eos_ids, jnp.int32)
    return {**s, "token": token, "out": out, "done": s["done"] | jnp.isin(token, eos_ids), "step": s["step"] + 1}

  def _decode_fn(self, variables, state, until, mode):
    """Tokens for every row until `until` are chosen or every row has ended: feed the last
    token, choose the next. A while loop, not a fixed-length one: no step past either."""
    self.traces += 1

    def step(s):
      logits, cache = self._forward(variables, s["token"][:, None], (s["index"] - s["pad"])[:, None], s["cache"],
                                    s["index"], s["key_valid"])
      return self._choose_next({**s, "cache": cache, "index": s["index"] + 1}, logits, mode)

    return jax.lax.while_loop(lambda s: (s["step"] < until) & ~jnp.all(s["done"]), step, state)


def prompt_ids(tokenizer, prompts, context_length, add_bos=None, where="prompt", special_tokens=True):
  """The ids of each prompt, as transformers' tokenizer(prompt) gives them: BOS first where
  the tokenizer puts it (`tokenizer.adds_bos`; add_bos=True/False overrides), special
  tokens spelled in the text as their ids (special_tokens=False: as text, for text you do
  not trust). A UserError for a prompt that leaves no room for a new token in the context."""
  add_bos = tokenizer.adds_bos if add_bos is None else add_bos
  bos = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
  ids = [bos + list(tokenizer.encode(p, special_tokens=special_tokens)) for p in prompts]
  for i, row in enumerate(ids):
    if len(row) >= context_length:
      raise UserError(f"{where} {i} is {len(row)} tokens, which leaves no room in the model's context of "
                      f"{context_length} tokens; shorten it")
  return ids


def fit_text(tokenizer, prompt_of, text, max_tokens, add_bos=None, special_tokens=True):
  """The longest start of `text` (whole where it fits) whose prompt, `prompt_of(start)`, is
  at most `max_tokens` tokens as `prompt_ids` encodes it: for a long email in a prompt whose
  other parts (a system message, the reply's headers, the template's tokens) must stay.
  Cut at a line's end where one is near; "[...]" marks the cut."""
  def length(start):
    return len(prompt_ids(tokenizer, [prompt_of(start)], math.inf, add_bos, special_tokens=special_tokens)[0])

  if length(text) <= max_tokens:
    return text
  low, high = 0, len(text)  # Bisect on characters: ~log2(len) encodings, not one per character.
  while low < high:
    middle = (low + high + 1) // 2
    low, high = (middle, high) if length(text[:middle] + "\n[...]\n") <= max_tokens else (low, middle - 1)
  line_end = text.rfind("\n", 0, low)
  start = text[:line_end + 1] if line_end > low * 0.8 else text[:low]
  return start + ("\n" if not start.endswith("\n") else "") + "[...]\n"


def complete(sampler, tokenizer, prompts, *, context_length, max_new_tokens=64, temperature=0.0, top_k=None,
             top_p=None, seed=0, stop=None, add_bos=None, special_tokens=True, variables=None):
  """Text completions of `prompts` (strs), without the prompt: each ends at EOS, at
  max_new_tokens, or before the first of the `stop` strings. The prompts are encoded by
  `prompt_ids` (`add_bos`, `special_tokens`). A prompt that leaves no room in the context
  is a UserError; a completion that would not fit is shortened."""
  stops = [stop] if isinstance(stop, str) else list(stop or [])
  ids = prompt_ids(tokenizer, prompts, context_length, add_bos, special_tokens=special_tokens)
  if not ids:
    return []
  longest = max(map(len, ids))
  room = context_length - longest
  if max_new_tokens > room:
    logging.warning("Generating at most %d tokens: the longest prompt has %d and the context is %d.", room,
                    longest, context_length)
  # A model's vocabulary may be padded past the tokenizer's (to a multiple of 128, say):
  # ids the tokenizer lacks have no text.
  text = lambda row: tokenizer.decode([i for i in row if i < tokenizer.vocab_size])  # noqa: E731
  stop_fn = (lambda row: any(s in text(row) for s in stops)) if stops else None
  rows = sampler.generate(ids, min(max_new_tokens, room), temperature=temperature, top_k=top_k, top_p=top_p,
                          seed=seed, stop=stop_fn, variables=variables)
  texts = [text(row) for row in rows]
  return [text[:min((text.find(s) for s in stops if s in text), default=len(text))] for text in texts]


def choose(logits, key, temperature, top_k, top_p, greedy, use_top_k, use_top_p):
  """One token id per row of `logits` [B, V]: the argmax, or a draw from softmax(logits /
  temperature) kept to the top_k most likely ids, then to the smallest set of ids whose
  probability reaches top_p (the order of Hugging Face's generate)."""
  if greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if use_top_k or use_top_p:
    ranked = jnp.sort(logits, axis=-1)[:, ::-1]
    if use_top_k:
      ranked = jnp.where(jnp.arange(ranked.shape[-1]) < top_k, ranked, -jnp.inf)
    if use_top_p:
      probs = jax.nn.softmax(ranked, axis=-1)
      before = jnp.cumsum(probs, axis=-1) - probs  # Mass of the ids ranked above each one.
      ranked = jnp.where(before < top_p, ranked, -jnp.inf)
    lowest_kept = jnp.min(jnp.where(jnp.isfinite(ranked), ranked, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits >= lowest_kept, logits, -jnp.inf)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
