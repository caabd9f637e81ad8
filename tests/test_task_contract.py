"""The task contract from an experiment module alone: a model whose input is not called
'image', trained on integer class ids, with its own model and evaluator defined in the
experiment file, run by the launcher as a user would."""

import json
import os
import subprocess
import sys
import textwrap

from conftest import ROOT

EXPERIMENT = textwrap.dedent('''
    """Digits as 64 pixel intensities under 'pixels', the class id under 'digit' (no one-hot)."""

    import flax.linen as nn
    import jax.numpy as jnp
    import ml_collections
    import numpy as np

    from jaxtrain import evals
    from jaxtrain.models import MODELS


    @MODELS.register("pixel_mlp")
    class PixelMLP(nn.Module):
      num_classes: int
      width: int = 64

      @nn.compact
      def __call__(self, pixels, *, train):
        h = nn.relu(nn.Dense(self.width)(pixels.reshape((pixels.shape[0], -1))))
        return nn.Dense(self.num_classes)(h), {"pre_logits": h}


    @evals.EVALUATORS.register("nearest_mean")
    class NearestMean:
      """Per-example features gathered to the host: accuracy of the nearest class mean of
      the training features (a probe the core knows nothing about)."""

      metric_names = ("accuracy",)

      def __init__(self, config, context):
        from jaxtrain import data
        from jaxtrain import step
        self.strategy = context.strategy
        batches = lambda split: data.pipeline.eval_batches(
            data.open_source("digits", split, cache=True), preprocess=data.ops.parse(PP), global_batch_size=64)
        self.train, self.test = batches("train"), batches("test")

        def features(variables, batch):
          _, out = step.apply(context.model, context.task, variables, batch, train=False)
          return {"features": out["pre_logits"], "digit": batch["digit"]}

        self.features = context.compile_outputs(features, self.train[0])

      def run(self, variables):
        train = evals.gather(self.features, variables, self.train, self.strategy)
        test = evals.gather(self.features, variables, self.test, self.strategy)
        means = np.stack([train["features"][train["digit"] == c].mean(0) for c in range(10)])
        guess = np.argmin(((test["features"][:, None] - means[None]) ** 2).sum(-1), -1)
        return {"accuracy": float(np.mean(guess == test["digit"])), "num_examples": len(guess)}


    PP = "value_range(0, 1)|rename(pixels='image', digit='label')|keep('pixels', 'digit')"


    def get_config(arg=None):
      c = ml_collections.ConfigDict()
      c.total_steps = 200
      c.log_every_steps = 50
      c.input = dict(data=dict(name="digits", split="train", cache=True), batch_size=64, pp=PP)
      c.task = dict(name="classification", inputs=dict(pixels="pixels"), labels="digit")
      c.model = dict(name="pixel_mlp", num_classes=10)
      c.loss = dict(name="softmax_xent")
      c.optimizer = dict(name="adam", lr=3e-3)
      c.evals = dict(val=dict(type="classification", data=dict(name="digits", split="test", cache=True), pp=PP),
                     probe=dict(type="nearest_mean"))
      return c
''')


def test_an_experiment_module_brings_its_own_inputs_targets_model_and_evaluator(tfds_dir, tmp_path):
  path = tmp_path / "pixels_experiment.py"
  path.write_text(EXPERIMENT)
  workdir = tmp_path / "run"
  result = subprocess.run([sys.executable, "-m", "jaxtrain.launch", f"--config={path}", f"--workdir={workdir}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8")]
  last = {k: v for row in rows for k, v in row.items()}
  assert last["step"] == 200
  assert last["val/accuracy"] > 0.9 and last["val/num_examples"] == 359
  assert last["probe/accuracy"] > 0.8 and last["probe/num_examples"] == 359
