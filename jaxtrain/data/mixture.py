"""Weighted mixtures of training sources, mixed deterministically per batch.

    input.data = dict(mixture=dict(new=dict(files='~/mail/*.txt', format='mbox', weight=0.8),
                                   old=dict(name='stdlib_code', weight=0.2)),
                      split='train', seq_len=256, tokenizer='runs/code/tokenizer.model')

Each source is a data section as `input.data` is, plus its `weight` (a number >= 0; only
the ratios count). The keys beside `mixture` are shared: every source reads them unless it
sets its own. Text sources share one tokenizer and one row length, so `tokenizer` and
`seq_len` are set once beside `mixture`, never in a source; a tokenizer left to train is
trained on the main source (below). All sources must give the same features (keys, shapes,
dtypes), and one `input.pp` preprocesses the mixed batches.

Which example fills slot j of the endless stream of training examples (global batch k
holds slots kB .. kB+B-1) is a closed-form function of j and the seed, so any batch is
made from its index alone (exact resume through Grain's iterator state; the same global
batches for any number of processes, each reading its slice):
  - the source: weights become integer parts of Q = 2^20 (largest remainder); source 0
    (by name) takes the slots where floor(p0 * j / Q) steps up, source 1 the slots where
    floor(p1 * r / (Q - p0)) steps up among the r slots left, and so on. So after any N
    slots each source has had its share of them to within one example per source, and
    every batch holds within 2 of weight x batch_size of each, interleaved; no randomness.
  - the example: source i's m-th slot reads its example perm(seed, i, m // n_i)[m % n_i],
    a fresh seeded permutation per pass over its n_i examples (no remainder dropped).
An epoch is one pass over the main source, the one with the largest weight (ties: the first
by name): len(main) / its share of the weights examples, floored to whole batches.
"""

import functools
import math
import zlib

from absl import logging
import numpy as np

from jaxtrain.config import REQUIRED
from jaxtrain.errors import UserError, did_you_mean

PARTS = 1 << 20        # Weights as integer parts of this: exact arithmetic, int64 safe below.
MAX_SLOTS = 1 << 42    # Slot indices times PARTS stay below 2^63.
_PERMUTATION = 3       # First word of the sources' permutation seeds (pipeline uses 0-2).
SHARED_TEXT_KEYS = ("seq_len", "tokenizer")


class Layered:
  """Config Readers read as one: a key comes from the first that sets it (the rest are
  defaults), and errors name where it was set. `hidden` keys come from the first alone."""

  def __init__(self, layers, hidden=()):
    self._layers, self._hidden = list(layers), set(hidden)

  def _find(self, name):
    for i, layer in enumerate(self._layers):
      if (i == 0 or name not in self._hidden) and name in layer:
        return layer
    return self._layers[0]

  def __getattr__(self, name):
    if name.startswith("_"):
      raise AttributeError(name)
    return self.get(name, REQUIRED)

  def __contains__(self, name):
    return any((i == 0 or name not in self._hidden) and name in layer for i, layer in enumerate(self._layers))

  def get(self, name, default=None, kind=None, minimum=None):
    return self._find(name).get(name, default, kind=kind, minimum=minimum)

  def path(self, name):
    return self._find(name).path(name)

  def section(self, name):
    return self._find(name).section(name)

  def keys(self):
    return list(dict.fromkeys(k for layer in self._layers for k in layer.keys() if k in self))

  def below(self, first, hidden):
    """`first` over these layers."""
    return Layered([first] + self._layers, hidden)


class Mixture:
  """The training source of a mixture: `len()` is one epoch's examples, and
  `read_positions(slots, seed)` the examples of global stream slots (see the module)."""

  def __init__(self, sources, parts, sections, main, data_dir):
    self.names = sorted(sources)
    self.sources, self.sections, self.main, self.data_dir = sources, sections, main, data_dir
    self.parts = np.array([parts[n] for n in self.names], np.int64)
    self.tokenizer = getattr(sources[main], "tokenizer", None)
    self.seq_len = getattr(sources[main], "seq_len", None)
    self.epoch_description = (f"one epoch of the mixture (a pass over its main source '{main}': "
                              f"{len(sources[main])} examples at {parts[main] / PARTS:.4g} of each batch)")
    self._permutation = functools.lru_cache(maxsize=2 * len(self.names))(self._permutation_uncached)

  def __len__(self):
    return len(self.sources[self.main]) * PARTS // int(self.parts[self.names.index(self.main)])

  def __repr__(self):
    return "Mixture(" + ", ".join(f"{n}: {p / PARTS:.4g} of {self.sources[n]!r}"
                                  for n, p in zip(self.names, self.parts)) + ")"

  def counts(self, slots):
    """[sources, len(slots)]: how many of the slots before each slot went to each source."""
    rest, left = np.asarray(slots, np.int64).copy(), PARTS
    counts = np.zeros((len(self.names),) + rest.shape, np.int64)
    for i, part in enumerate(self.parts):
      counts[i] = rest * part // left if left else 0
      rest -= counts[i]
      left -= int(part)
    return counts

  def assign(self, slots):
    """(source index, position in that source's stream) of each slot."""
    slots = np.asarray(slots, np.int64)
    if slots.size and slots.max() >= MAX_SLOTS:
      raise ValueError(f"a mixture's stream has {MAX_SLOTS} examples; slot {slots.max()} is beyond it")
    before, after = self.counts(slots), self.counts(slots + 1)
    which = np.argmax(after - before, axis=0)
    return which, np.take_along_axis(before, which[None], axis=0)[0]

  def _permutation_uncached(self, i, seed, epoch):
    name = self.names[i]
    return np.random.default_rng([_PERMUTATION, seed, zlib.crc32(name.encode()), epoch]).permutation(
        len(self.sources[name]))

  def read_positions(self, slots, seed):
    """The examples of global stream slots, in order, read source by source."""
    which, position = self.assign(slots)
    parts = {}
    for i in np.unique(which):
      n = len(self.sources[self.names[i]])
      mine = position[which == i]
      epochs, offsets = np.divmod(mine, n)
      indices = np.empty_like(mine)
      for epoch in np.unique(epochs):
        indices[epochs == epoch] = self._permutation(int(i), seed, int(epoch))[offsets[epochs == epoch]]
      parts[i] = self.sources[self.names[i]].read(indices)
    first = next(iter(parts.values()))
    batch = {key: np.empty((len(which),) + np.shape(value)[1:], np.asarray(value).dtype) for key, value in first.items()}
    for i, part in parts.items():
      for key in batch:
        batch[key][which == i] = part[key]
    return batch


def open_mixture(data, open_one, default_data_dir=None):
  """The `Mixture` of `data` (input.data with a `mixture` section); `open_one(section, like)`
  opens one source's section as a data section (see data.open_from_config)."""
  mixture = data.section("mixture")
  names = sorted(mixture.keys())
  if not names:
    raise UserError(f"config key '{data.path('mixture')}' has no sources; name each with its section, e.g. "
                    f"mixture=dict(new=dict(files='notes/*.txt', weight=0.8), old=dict(name='stdlib_code', weight=0.2))")
  raw, weights = {}, {}
  for name in names:
    raw[name] = section = mixture.get(name)
    if not hasattr(section, "keys"):
      raise UserError(f"config key '{mixture.path(name)}' must be a data section with a weight, got {section!r}")
    weights[name] = _weight(section)
    for key in SHARED_TEXT_KEYS:
      if key in section:
        raise UserError(f"config key '{section.path(key)}': the sources of a mixture share one {key}; set it once "
                        f"as '{data.path(key)}'")
  parts = _parts(weights, data.path("mixture"))
  main = max(names, key=lambda n: (parts[n], -names.index(n)))
  from jaxtrain.data import text  # pylint: disable=import-outside-toplevel
  is_text = text.is_text(Layered([raw[main], data], hidden=("mixture",)))
  # The others take the main source's tokenizer, never one trained on their own data.
  sections = {n: Layered([raw[n], data], hidden=("mixture", "weight") + (("tokenizer",) if n != main else ()))
              for n in names}
  if is_text:  # Each source's files, before the main source's tokenizer trains: a bad one fails at once.
    for name in names:
      text.check_files(sections[name])
  sources = {main: open_one(sections[main], None)}
  for name in names:
    if name == main:
      continue
    if is_text and not ("name" in sections[name] or "files" in sections[name]):
      raise UserError(f"config key '{mixture.path(name)}' names no data: set its 'name' (a TFDS dataset) or 'files'")
    sources[name] = open_one(sections[name], sources[main] if is_text else None)
  _check_features(sources, mixture)
  result = Mixture(sources, parts, sections, main, data.get("data_dir", default_data_dir, kind=str))
  logging.info("Training data: %r; an epoch is a pass over '%s' (%d examples)", result, main, len(result))
  return result


def _weight(section):
  value = section.get("weight", kind=float)
  if value is None:
    raise UserError(f"config key '{section.path('weight')}' is not set: each source of a mixture needs a weight "
                    f"(its share of every batch, e.g. 0.2)")
  if not math.isfinite(value) or value < 0:
    raise UserError(f"config key '{section.path('weight')}' must be a finite number >= 0, got {value!r}")
  return float(value)


def _parts(weights, where):
  """Integer parts of PARTS, by largest remainder (ties: by name), summing to PARTS."""
  total = sum(weights.values())
  if total <= 0:
    raise UserError(f"the weights of config key '{where}' sum to 0; give at least one source a "
                    f"positive weight")
  exact = {n: w / total * PARTS for n, w in weights.items()}
  parts = {n: int(math.floor(v)) for n, v in exact.items()}
  for n in sorted(exact, key=lambda n: -(exact[n] - parts[n]))[:PARTS - sum(parts.values())]:
    parts[n] += 1
  for n, w in weights.items():
    if w > 0 and parts[n] == 0:
      raise UserError(f"config key '{where}.{n}.weight' is {w!r}, less than 1/{PARTS} of the total weight; "
                      f"raise it, or set 0 to leave the source out")
  return parts


def _check_features(sources, mixture):
  """Every source gives the same keys, per-example shapes and dtypes."""
  def spec(source):
    example = source.read(np.zeros(1, np.int64))
    return {k: (np.shape(v)[1:], np.asarray(v).dtype.name) for k, v in sorted(example.items())}

  specs = {name: spec(source) for name, source in sources.items()}
  first = next(iter(specs))
  for name, s in specs.items():
    if s != specs[first]:
      show = lambda x: ", ".join(f"{k} {list(shape)} {dtype}" for k, (shape, dtype) in x.items())
      raise UserError(f"config key '{mixture.path(name)}': source '{name}' gives {show(s)} but '{first}' gives "
                      f"{show(specs[first])}; the sources of a mixture must give the same features")


def for_evaluation(data, like):
  """(data, like) for an evaluator's data section when training reads a mixture: its
  `source` names the source it evaluates (another split of it, by default the same
  dataset, classes, tokenizer and seq_len). `like` is any other training source."""
  if not isinstance(like, Mixture):
    if "source" in data:
      raise UserError(f"config key '{data.path('source')}' names a source of a mixture, but input.data has no "
                      f"mixture; remove it")
    return data, like
  name = data.get("source", kind=str)
  if name is None:
    if not ("name" in data or "files" in data):
      raise UserError(f"config key '{data.path('source')}' is not set: training reads a mixture, so name the "
                      f"source to evaluate ({', '.join(like.names)}), or set '{data.path('name')}' or "
                      f"'{data.path('files')}'")
    return data, like.sources[like.main]  # Its own data, with the mixture's tokenizer and seq_len.
  if name not in like.sources:
    raise UserError(f"config key '{data.path('source')}' is '{name}', not a source of the mixture"
                    f"{did_you_mean(name, like.names)}; the sources are {', '.join(like.names)}")
  source = like.sources[name]
  if like.tokenizer is not None:
    return data, source  # Text: the evaluator's section inherits from the source (data.text).
  # Split, weight and the mixture are never inherited: an evaluator names its split.
  return like.sections[name].below(data, hidden=("split", "mixture", "weight", "source")), None
