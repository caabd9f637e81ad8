"""Few-shot linear probes on frozen features (big_vision's `fewshot` semantics).

    config.evals.fewshot = dict(type='fewshot',
        datasets=dict(digits59=dict(name='digits', train_split='train', test_split='test',
                                    classes=(5, 6, 7, 8, 9))),
        pp="value_range(-1, 1)|keep('image', 'label')", label_key='label',
        representation='pre_logits', shots=(1, 5, 10, 25), seeds=(0, 1, 2, 3, 4),
        l2_reg=DEFAULT_L2_REG, batch_size=..., every_epochs=10)

Each of `datasets` (name -> a data section with `train_split` and `test_split` instead
of `split`; `data_dir`, `cache`, `classes`, `class_key` as in input.data) is run through
`pp` and the model (train=False). `representation` picks the features: a key of the
model's `out` dict (default 'pre_logits'), 'logits', or 'input', the model's input
itself (flattened: the raw-pixels baseline through the same evaluator). For each shot
count and seed, `shots` examples of each class of the train split are drawn (nested, as
big_vision: seed s permutes each class once and k shots take the first k), a
least-squares classifier with an L2 penalty `l2_reg` is solved in closed form on
features standardised by the drawn examples' mean and std, with a bias feature and
targets +1 for the class, -1 otherwise, and scored on every example of the test split.

Metrics: `<dataset>_<shots>shot`, the test accuracy averaged over seeds;
`<dataset>_<shots>shot_std`, its standard deviation over seeds (ddof=0); and
`mean_<shots>shot`, the mean over datasets. Features are computed on the devices; the
solve runs on the host in float64. Examples are put back in the split's order before the
draw, so the results depend on the seed only, not on the number of devices or processes.
"""

import numpy as np
import jax
import jax.numpy as jnp

from jaxtrain import data
from jaxtrain.errors import UserError
from jaxtrain.evals import EVALUATORS, gather
from jaxtrain import step as step_lib

# Measured on the mirror of the digits transfer demo (CNN pre-trained on the digits 5-9,
# probed on 0-4, 20 seeds: `scripts/fewshot_transfer.py --mirror --l2_sweep`), so that the
# demo's own test split did not choose it. Over l2_reg = 2^-2 ... 2^10 the pre-trained
# features score best at 2-8 (5/10/25 shots 0.901/0.953/0.978 at 4), lose at most 0.004
# at 16 (0.897/0.950/0.976), then fall (0.870/0.930/0.961 at 64; 0.752/0.814/0.883 at
# 2^10, big_vision's default for its much wider ViT features). Random-init features and
# raw pixels prefer 32-256, and dip below about 4 where examples ~ features (pixels
# 10-shot, 50 examples and 65 features: 0.863 at 1, 0.915 at 16). 16 has the best sum over
# the three representations and four shot counts (10.135, tied with 32, whose pre-trained
# 5/10/25-shot are 0.888/0.944/0.970). 1-shot hardly depends on l2_reg.
DEFAULT_L2_REG = 16.0
# big_vision's bias: a constant feature, large so that the penalty hardly touches it.
BIAS = 100.0
INDEX = "_index"  # Each example's position in its split, carried through the pipeline.


@EVALUATORS.register("fewshot")
class FewShot:
  """Reads datasets, pp, label_key, representation, shots, seeds, l2_reg, batch_size."""

  def __init__(self, config, context):
    self.strategy = strategy = context.strategy
    self.label_key = config.get("label_key", "label")
    self.representation = config.get("representation", "pre_logits")
    self._representation_key = config.path("representation")
    self.shots = _ints(config, "shots", (1, 5, 10, 25), minimum=1)
    self.seeds = _ints(config, "seeds", (0, 1, 2, 3, 4), minimum=0)
    self.l2_reg = config.get("l2_reg", DEFAULT_L2_REG)
    if not self.l2_reg > 0:
      raise UserError(f"config key '{config.path('l2_reg')}' must be positive, got {self.l2_reg!r}")
    self.batch_size = config.get("batch_size", context.batch_size)
    strategy.check_batch_size(self.batch_size, config.path("batch_size"))
    pp_where = config.path("pp")
    preprocess = data.ops.parse(config.get("pp", ""), where=pp_where)
    sections = config.section("datasets")
    if not sections.keys():
      raise UserError(f"config key '{config.path('datasets')}' must name at least one dataset, e.g. "
                      f"datasets=dict(digits=dict(name='digits', train_split='train', test_split='test'))")
    self.datasets, self._compiled = {}, {}
    for name in sections.keys():
      if name == "mean":
        raise UserError(f"config key '{sections.path(name)}': 'mean' is taken by the mean_<shots>shot metrics; "
                        f"give the dataset another name")
      section = sections.section(name)
      splits = {}
      for part in ("train", "test"):
        source = data.open_from_config(section, default_data_dir=context.data_dir, split_key=f"{part}_split")
        splits[part] = _Split(source, preprocess, self.batch_size, strategy)
        self._check_batch(splits[part].batches[0], context, pp_where)
      self._check_counts(name, section, splits["train"])
      self.datasets[name] = splits
    self.metric_names = tuple(f"{name}_{k}shot{std}" for name in self.datasets for k in self.shots
                              for std in ("", "_std")) + tuple(f"mean_{k}shot" for k in self.shots)

  # ---- Start-up checks and compilation ---------------------------------------------------

  def _check_batch(self, batch, context, pp_where):
    if self.label_key not in batch:
      have = ", ".join(sorted(k for k in batch if not k.startswith("_")))
      raise UserError(f"{pp_where} must leave the labels '{self.label_key}' (label_key) in the batch; it has {have}")
    labels = batch[self.label_key]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
      raise UserError(f"{pp_where} must give '{self.label_key}' as one integer class id per example, got "
                      f"{labels.dtype} of shape {labels.shape[1:]} per example (no onehot here)")
    try:  # Only the model's inputs: the task's labels are not needed here.
      context.task.model_inputs(batch)
    except KeyError as e:
      have = ", ".join(sorted(k for k in batch if not k.startswith("_")))
      raise UserError(f"{pp_where} must leave the model's input {e} in the batch; it has {have}") from None
    signature = tuple(sorted((k, v.shape, v.dtype.str) for k, v in batch.items()))
    if signature not in self._compiled:
      fn = self._features_fn(context, batch)
      self._compiled[signature] = context.compile_outputs(fn, batch)

  def _features_fn(self, context, batch):
    model, task, key = context.model, context.task, self.representation

    def representation(variables, batch):
      if key == "input":
        args, kwargs = task.model_inputs(batch)
        return jnp.concatenate([x.reshape(x.shape[0], -1).astype(jnp.float32) for x in [*args, *kwargs.values()]], -1)
      logits, out = step_lib.apply(model, task, variables, batch, train=False)
      return logits if key == "logits" else out[key]

    if key not in ("input", "logits"):
      returned = jax.eval_shape(lambda v, b: step_lib.apply(model, task, v, b, train=False),
                                context.abstract_variables, batch)
      out = returned[1] if isinstance(returned, tuple) and len(returned) == 2 else None
      if not isinstance(out, dict) or key not in out:
        keys = sorted(out) if isinstance(out, dict) else []
        raise UserError(f"config key '{self._representation_key}' is '{key}', which the model does not return; "
                        f"choose one of {', '.join(map(repr, keys + ['logits', 'input']))}")

    def fn(variables, batch):
      x = representation(variables, batch)
      return {"features": x.reshape(x.shape[0], -1).astype(jnp.float32), "label": batch[self.label_key],
              "index": batch[INDEX]}

    return fn

  def _check_counts(self, name, section, train):
    """Each class of the train split needs max(shots) examples; read on the host (no model)."""
    labels = np.concatenate([b[self.label_key][b[data.pipeline.MASK] > 0] for b in train.host_batches()])
    classes, counts = np.unique(labels, return_counts=True)
    need = max(self.shots)
    if len(classes) < 2:
      raise UserError(f"fewshot dataset '{name}' ({section.name}, {section.train_split}) has "
                      f"{len(classes)} class in its train split; a probe needs at least 2")
    for c, n in zip(classes, counts):
      if n < need:
        raise UserError(f"fewshot dataset '{name}' ({section.name}, {section.train_split}) has {n} training examples "
                        f"of class {c}; {need}-shot needs {need} per class: lower shots or leave the class out")

  # ---- Running ---------------------------------------------------------------------------

  def features(self, variables):
    """{dataset: {'train'|'test': {'features', 'label', 'index'}}}, numpy, every example once
    and in its split's order."""
    result = {}
    for name, splits in self.datasets.items():
      result[name] = {}
      for part, split in splits.items():
        signature = tuple(sorted((k, v.shape, v.dtype.str) for k, v in split.batches[0].items()))
        out = gather(self._compiled[signature], variables, split.batches, self.strategy)
        order = np.argsort(out["index"], kind="stable")
        result[name][part] = {k: v[order] for k, v in out.items()}
    return result

  def run(self, variables):
    metrics, per_shots = {}, {k: [] for k in self.shots}
    for name, splits in self.features(variables).items():
      train, test = splits["train"], splits["test"]
      for shots in self.shots:
        accuracies = [probe_accuracy(train["features"], train["label"], test["features"], test["label"],
                                     shots, seed, self.l2_reg) for seed in self.seeds]
        metrics[f"{name}_{shots}shot"] = float(np.mean(accuracies))
        metrics[f"{name}_{shots}shot_std"] = float(np.std(accuracies))
        per_shots[shots].append(metrics[f"{name}_{shots}shot"])
    metrics.update({f"mean_{k}shot": float(np.mean(v)) for k, v in per_shots.items()})
    return metrics


class _Split:
  """A split's padded batches, each example carrying its position (INDEX) through `pp`."""

  def __init__(self, source, preprocess, batch_size, strategy):
    self.source, self.batch_size = source, batch_size

    def numbered(batch, rng):
      index = batch.pop(INDEX)
      batch = preprocess(batch, rng)
      batch[INDEX] = index
      return batch

    self.preprocess = numbered
    self.batches = self._batches(strategy.process_index, strategy.process_count)

  def _batches(self, process_index, process_count):
    return data.pipeline.eval_batches(_Numbered(self.source), preprocess=self.preprocess,
                                      global_batch_size=self.batch_size, process_index=process_index,
                                      process_count=process_count)

  def host_batches(self):
    """The whole split on this host (for the start-up checks)."""
    batches = self._batches(0, 1)
    return (batches[i] for i in range(len(batches)))


class _Numbered:
  def __init__(self, source):
    self.source = source

  def __len__(self):
    return len(self.source)

  def read(self, indices):
    return {**self.source.read(indices), INDEX: np.asarray(indices, np.int32)}


def probe_accuracy(x, y, x_test, y_test, shots, seed, l2_reg):
  """Test accuracy of the probe fitted on `shots` examples per class of (x, y) drawn with `seed`."""
  drawn = draw(y, shots, seed)
  classes = np.unique(y)
  predict = fit(x[drawn], y[drawn], classes, l2_reg)
  return float(np.mean(predict(x_test) == np.asarray(y_test)))


def draw(y, shots, seed):
  """Indices of `shots` examples of each class of `y`: each class's examples permuted once
  by `seed`, the first `shots` taken (so 5 shots hold the 1-shot example)."""
  rng = np.random.default_rng(seed)
  return np.concatenate([rng.permutation(np.flatnonzero(y == c))[:shots] for c in np.unique(y)])


def fit(x, y, classes, l2_reg):
  """L2-regularised least squares on (x, y): `predict(x_test) -> class ids`.

  Features are standardised by the mean and std of `x` (+1e-5: a feature constant on the
  drawn examples stays finite), a constant BIAS feature is appended, and the targets are
  +1 for an example's class and -1 for the others. The weights are (x'x + l2 I)^-1 x'y, or,
  with fewer examples than features, the same as x'(xx' + l2 I)^-1 y (the smaller solve)."""
  x = np.asarray(x, np.float64)
  mean, std = x.mean(0), x.std(0) + 1e-5
  x = _with_bias((x - mean) / std)
  targets = 2.0 * (np.asarray(y)[:, None] == np.asarray(classes)[None, :]) - 1.0
  n, d = x.shape
  if n >= d:
    w = np.linalg.solve(x.T @ x + l2_reg * np.eye(d), x.T @ targets)
  else:
    w = x.T @ np.linalg.solve(x @ x.T + l2_reg * np.eye(n), targets)

  def predict(x_test):
    scores = _with_bias((np.asarray(x_test, np.float64) - mean) / std) @ w
    return np.asarray(classes)[np.argmax(scores, axis=1)]

  predict.weights = w
  return predict


def _with_bias(x):
  return np.concatenate([x, np.full((len(x), 1), BIAS)], axis=1)


def _ints(config, key, default, minimum):
  value = config.get(key, default, kind=object)
  values = value if isinstance(value, (list, tuple)) else (value,)
  if not values or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= minimum
                           for v in values):
    raise UserError(f"config key '{config.path(key)}' must be a non-empty list of integers >= {minimum}, got {value!r}")
  return tuple(int(v) for v in values)
