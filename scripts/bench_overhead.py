"""How much of a bare jit loop's speed does the jaxtrain loop keep?

In one process, interleaved round by round, it times
  - jaxtrain: `train.run` on the digits experiment (input pipeline, default logging,
    metrics files; evaluation and periodic checkpoints off), steady-state steps/s read
    from its own log rows after the first (compiling) interval;
  - bare: a hand-written `jax.jit` train step over the same model, optimizer and loss,
    cycling through batches already on the device, no logging at all;
and prints the median ratio jaxtrain/bare for the digits CNN and for a wider CNN whose
step takes at least 20 ms. Goals: >= 0.95 (digits), >= 0.98 (wide).

    python scripts/bench_overhead.py [--rounds 5]
"""

import argparse
import importlib.util
import json
import os
import statistics
import tempfile
import time

import jax
import numpy as np
import optax

from jaxtrain import config as config_lib
from jaxtrain import data
from jaxtrain import losses
from jaxtrain import models
from jaxtrain import train
from jaxtrain.training import optim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def digits_config():
  spec = importlib.util.spec_from_file_location("digits", os.path.join(ROOT, "experiments", "digits.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def variants(steps_digits, steps_wide):
  digits = digits_config()
  del digits["evals"]
  digits.checkpoint.every_epochs = None  # Only the final save, outside the timed intervals.
  digits.total_epochs = None
  digits.total_steps = steps_digits
  wide = digits_config()
  del wide["evals"]
  wide.checkpoint.every_epochs = None
  wide.total_epochs = None
  wide.total_steps = steps_wide
  wide.model.features = (64, 128)
  wide.model.dense = 256
  return {"digits": digits, "wide": wide}


def jaxtrain_steps_per_sec(config):
  """Median steps/s of the loop's log intervals after the first (which compiles)."""
  with tempfile.TemporaryDirectory() as workdir:
    train.run(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
      rows = [json.loads(line) for line in f if "train/steps_per_sec" in line]
  return statistics.median(r["train/steps_per_sec"] for r in rows[1:])


def make_bare_loop(config):
  """A plain jit loop built from the same config, with device-resident batches."""
  cfg = config_lib.Reader(config)
  model = models.build(cfg.model)
  loss_fn = losses.build(cfg.loss)
  source = data.open_from_config(cfg.input.data)
  batch_size = cfg.input.batch_size
  steps_per_epoch = len(source) // batch_size
  tx, _ = optim.build(cfg.optimizer, cfg.schedule, total_steps=cfg.total_steps,
                      steps_per_epoch=steps_per_epoch, batch_size=batch_size)
  ds = data.pipeline.train_dataset(source, preprocess=data.ops.parse(cfg.input.pp),
                                   global_batch_size=batch_size, seed=0)
  batches = [jax.device_put(ds[k]) for k in range(16)]
  variables = model.init(jax.random.PRNGKey(0), batches[0]["image"], train=False)
  params = variables.pop("params")
  model_state = dict(variables)
  opt_state = tx.init(params)

  def step(params, model_state, opt_state, batch, rng):
    def loss_of(p):
      (logits, _), new_state = model.apply({"params": p, **model_state}, batch["image"], train=True,
                                           rngs={"dropout": rng}, mutable=list(model_state))
      return loss_fn(logits, batch["labels"]).mean(), new_state
    (loss, new_state), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_state, opt_state, loss

  step = jax.jit(step, donate_argnums=(0, 1, 2))
  rng = jax.random.PRNGKey(1)

  def run(num_steps):
    nonlocal params, model_state, opt_state
    for i in range(3):  # Compile and warm up.
      params, model_state, opt_state, loss = step(params, model_state, opt_state, batches[i], rng)
    jax.block_until_ready(loss)
    start = time.perf_counter()
    for i in range(num_steps):
      params, model_state, opt_state, loss = step(params, model_state, opt_state, batches[i % 16], rng)
    jax.block_until_ready(loss)
    return num_steps / (time.perf_counter() - start)

  return run


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps_digits", type=int, default=400)
  parser.add_argument("--steps_wide", type=int, default=200)
  args = parser.parse_args()
  print(f"jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs")
  results = {}
  for name, config in variants(args.steps_digits, args.steps_wide).items():
    bare = make_bare_loop(config)
    steps = config.total_steps
    ours, theirs = [], []
    for r in range(args.rounds):
      ours.append(jaxtrain_steps_per_sec(config))
      theirs.append(bare(steps))
      print(f"  {name} round {r + 1}: jaxtrain {ours[-1]:.1f} steps/s, bare {theirs[-1]:.1f} steps/s, "
            f"ratio {ours[-1] / theirs[-1]:.3f}", flush=True)
    ratios = [a / b for a, b in zip(ours, theirs)]
    results[name] = (statistics.median(ours), statistics.median(theirs), statistics.median(ratios))
  print()
  print(f"{'model':8} {'jaxtrain steps/s':>17} {'bare steps/s':>13} {'step ms':>8} {'ratio':>6} {'goal':>5}")
  for name, (ours, theirs, ratio) in results.items():
    goal = 0.95 if name == "digits" else 0.98
    print(f"{name:8} {ours:17.1f} {theirs:13.1f} {1000 / theirs:8.2f} {ratio:6.3f} {goal:5.2f}")


if __name__ == "__main__":
  main()
