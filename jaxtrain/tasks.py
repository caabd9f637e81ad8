"""The task contract: which batch keys feed the model, what the loss compares, the metrics.

    config.task = dict(name='classification', inputs='image', labels='labels')
    config.task = dict(name='next_token', inputs='inputs', targets='targets')

`inputs` names the batch key passed to the model as its first argument, or maps the
model's argument names to batch keys: `inputs=dict(x='pixels', mask='valid')`. A config
without a `task` section is classification of 'image' by 'labels' (the digits configs).

A task gives the train step and the evaluators everything that depends on what is learnt:
  model_inputs(batch) -> (args, kwargs) for `model.apply` (besides `train=`);
  units(logits, batch) -> {'loss': array, name: array, ...}, all of the loss's shape
        ([batch] per example, [batch, tokens] per token). The step multiplies each by the
        batch's 'weights' (and an eval batch's '_mask'), sums over the global batch, and
        divides once, so every metric is a weighted sum divided once however the batch is
        split over devices and microbatches;
  metrics(sums) -> {name: value} from those sums and 'weight' (their weight); it runs in
        the compiled step and on host numbers alike (jnp on both).
Register a new one with `@TASKS.register('name')`, or name it as 'module.path:Class'.
"""

import math

import jax.numpy as jnp

from jaxtrain.errors import UserError
from jaxtrain import losses
from jaxtrain.registry import Registry

TASKS = Registry("task")


def build(config):
  """The task of `config.task` (a Reader), with `config.loss` for its loss."""
  section = config.section("task")
  cls = TASKS.get(section.get("name", "classification"))
  return cls(section, config.section("loss"))


class Task:
  """Shared by the built-in tasks: reading `inputs` and checking a batch has the keys."""

  metric_names = ("loss",)
  count_name = None  # A name for the sum of weights in evaluation ('num_tokens'), if it counts anything.

  def __init__(self, section, default_inputs):
    inputs = section.get("inputs", default_inputs, kind=object)
    if isinstance(inputs, str):
      self.args, self.kwargs = (inputs,), {}
    elif hasattr(inputs, "to_dict") and all(isinstance(v, str) for v in inputs.to_dict().values()):
      self.args, self.kwargs = (), inputs.to_dict()
    else:
      raise UserError(f"config key '{section.path('inputs')}' must be a batch key, or a dict of model argument "
                      f"-> batch key, got {inputs!r}")
    self.where = section.path("")  # 'task.'


  def reads(self):
    """{batch key: what the task reads it as}, checked against the first batch at start-up."""
    return {**{key: f"the model's input ({self.where}inputs)" for key in self.args},
            **{key: f"the model's {name} ({self.where}inputs)" for name, key in self.kwargs.items()}}

  def check_batch(self, batch, where):
    """Says at start-up, naming the pipeline at `where`, which keys the task misses."""
    missing = [f"{key!r} ({role})" for key, role in self.reads().items() if key not in batch]
    if missing:
      have = ", ".join(sorted(k for k in batch if not k.startswith("_")))
      raise UserError(f"{where} must leave {' and '.join(missing)} in the batch; it has {have}")

  def model_inputs(self, batch):
    return [batch[key] for key in self.args], {name: batch[key] for name, key in self.kwargs.items()}


@TASKS.register("classification")
class Classification(Task):
  """Labels are class ids ([batch] ints) or one-, multi-hot or soft targets ([batch, classes]).

  accuracy is precision@1: the top logit's class is one of the classes with the highest
  label (the true class of a one-hot label; any positive class of a multi-hot one)."""

  metric_names = ("loss", "accuracy")

  def __init__(self, section, loss_config):
    super().__init__(section, "image")
    self.labels = section.get("labels", "labels")
    self.loss_fn = losses.build(loss_config, default="softmax_xent")

  def reads(self):
    return {**super().reads(), self.labels: f"the labels ({self.where}labels)"}

  def units(self, logits, batch):
    labels = batch[self.labels]
    top = jnp.argmax(logits, -1)
    if jnp.issubdtype(labels.dtype, jnp.integer):
      correct = top == labels
    else:
      correct = jnp.take_along_axis(labels, top[..., None], -1)[..., 0] >= labels.max(-1)
    return {"loss": self.loss_fn(logits, labels), "correct": correct.astype(jnp.float32)}

  def metrics(self, sums):
    weight = sums["weight"]
    return {"accuracy": sums["correct"] / weight, "loss": sums["loss"] / weight}


@TASKS.register("next_token")
class NextToken(Task):
  """Language modelling: logits [batch, tokens, vocab] against integer `targets`.

  Reads 'segment_ids' and 'positions' too when the batch has them (packed documents),
  and 'bytes' (the text bytes each target stands for) to report bits_per_byte, which
  compares models whatever their tokenizers: sum of nats / ln 2 / sum of bytes.

  `logits`: 'all' (default) computes the logits at every token; 'scored' only at tokens
  of non-zero weight, where the model can (step.scored_sums): for data that scores a part
  of the tokens (a chat's replies). With every token scored it would only add the head's
  recomputation in the backward pass."""

  count_name = "num_tokens"

  def __init__(self, section, loss_config):
    super().__init__(section, "inputs")
    self.targets = section.get("targets", "targets")
    logits = section.get("logits", "all")
    if logits not in ("scored", "all"):
      raise UserError(f"config key '{section.path('logits')}' must be 'scored' or 'all', got {logits!r}")
    self.scores_positions = logits == "scored"
    self.optional = {name: section.get(name, name) for name in ("segment_ids", "positions")}
    self.bytes = section.get("bytes", "bytes")
    self.loss_fn = losses.build(loss_config, default="softmax_xent")
    self.metric_names = ("loss", "accuracy", "perplexity")

  def reads(self):
    return {**super().reads(), self.targets: f"the targets ({self.where}targets)"}

  def check_batch(self, batch, where):
    super().check_batch(batch, where)
    if self.bytes in batch:
      self.metric_names = ("loss", "accuracy", "perplexity", "bits_per_byte")

  def model_inputs(self, batch):
    args, kwargs = super().model_inputs(batch)
    kwargs.update({name: batch[key] for name, key in self.optional.items() if key in batch})
    return args, kwargs

  def units(self, logits, batch):
    targets = batch[self.targets]
    units = {"loss": self.loss_fn(logits, targets),
             "correct": (jnp.argmax(logits, -1) == targets).astype(jnp.float32)}
    if self.bytes in batch:
      units["bytes"] = jnp.asarray(batch[self.bytes], jnp.float32)
    return units

  def metrics(self, sums):
    loss = sums["loss"] / sums["weight"]
    out = {"loss": loss, "accuracy": sums["correct"] / sums["weight"], "perplexity": jnp.exp(loss)}
    if "bytes" in sums:
      out["bits_per_byte"] = sums["loss"] / math.log(2) / sums["bytes"]
    return out
