"""Steps/s and per-device memory of each parallel strategy, side by side, on the devices here.

Builds the digits experiment (a wide MLP, so that there is something to shard) once per
strategy: pmap; jit with the batch over `data`; jit with FSDP over every device; jit with
data x fsdp; jit with 4 accumulation microbatches. Then, interleaved round by round, it
times each compiled train step on batches already on the devices and prints the median
steps/s, the ratio to pmap (goal: jit >= pmap) and the train state's bytes per device.

    python scripts/bench_parallel.py                 # 8 fake CPU devices unless an accelerator is found
    python scripts/bench_parallel.py --cpu_devices=0 # the devices as they are (e.g. one GPU)
"""

import argparse
import os
import statistics
import sys
import time


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--cpu_devices", type=int, default=8,
                      help="fake this many CPU devices (0: leave the platform's own devices alone)")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=30, help="timed steps per strategy per round")
  parser.add_argument("--batch_size", type=int, default=256, help="global batch (digits has 1,438 examples)")
  parser.add_argument("--hidden", type=int, default=1024, help="width of the MLP's two hidden layers")
  return parser.parse_args()


ARGS = parse_args()
if ARGS.cpu_devices:  # Before JAX starts: it reads the flag once.
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={ARGS.cpu_devices}"

# pylint: disable=wrong-import-position
import importlib.util

import jax

from jaxtrain.errors import UserError
from jaxtrain.training import build as build_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STRATEGIES = {
    "pmap": dict(strategy="pmap"),
    "jit data": dict(),
    "jit fsdp": dict(mesh=dict(data=1, fsdp=-1), fsdp_min_size=0),
    "jit data x fsdp": dict(mesh=dict(data=2, fsdp=-1), fsdp_min_size=0),
    "jit data, accumulate 4": dict(accumulate_steps=4),
}


def config_for(parallel):
  spec = importlib.util.spec_from_file_location("digits", os.path.join(ROOT, "experiments", "digits.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("mlp")
  c.model.hidden = (ARGS.hidden, ARGS.hidden)
  c.model.dropout = 0.0
  c.input.batch_size = ARGS.batch_size
  c.parallel.update(parallel)
  return c


def prepare(parallel):
  """(run(num_steps) -> steps/s, bytes of train state per device) for one strategy."""
  exp = build_lib.build(config_for(parallel))
  state = exp.strategy.init(exp.create, exp.abstract_state)
  batches = [exp.strategy.shard(exp.data.train_ds[k]) for k in range(8)]

  def run(num_steps):
    nonlocal state
    for i in range(2):  # Warm up.
      state, metrics = exp.train_step(state, batches[i])
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for i in range(num_steps):
      state, metrics = exp.train_step(state, batches[i % len(batches)])
    jax.block_until_ready(metrics)
    return num_steps / (time.perf_counter() - start)

  return run, exp.strategy.bytes_per_device(exp.abstract_state), exp.strategy.describe()


def main():
  device = jax.devices()[0]
  print(f"jax {jax.__version__}, {jax.device_count()} x {device.device_kind} ({device.platform}), "
        f"{os.cpu_count()} CPUs; MLP {ARGS.hidden}x{ARGS.hidden}, global batch {ARGS.batch_size}")
  prepared = {}
  for name, parallel in STRATEGIES.items():
    if jax.device_count() == 1 and name != "jit data":
      continue  # One device: every strategy is the same thing.
    try:
      prepared[name] = prepare(parallel)
    except UserError as e:  # E.g. a mesh these devices cannot make.
      print(f"  {name}: skipped ({e})")
  if not prepared:
    return 1
  rates = {name: [] for name in prepared}
  for r in range(ARGS.rounds):
    for name, (run, _, _) in prepared.items():
      rates[name].append(run(ARGS.steps))
    print(f"  round {r + 1}: " + ", ".join(f"{name} {rates[name][-1]:.1f}" for name in prepared), flush=True)
  print()
  reference = statistics.median(rates["pmap"]) if "pmap" in rates else None
  print(f"{'strategy':24} {'layout':36} {'steps/s':>8} {'vs pmap':>8} {'state MiB/device':>17}")
  for name, (_, state_bytes, layout) in prepared.items():
    median = statistics.median(rates[name])
    ratio = f"{median / reference:8.3f}" if reference else f"{'-':>8}"
    print(f"{name:24} {layout:36} {median:8.1f} {ratio} {state_bytes / 2**20:17.2f}")
  stats = device.memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    print(f"peak device memory (all strategies, device 0): {stats['peak_bytes_in_use'] / 2**20:.1f} MiB")
  return 0


if __name__ == "__main__":
  sys.exit(main())
