"""How long does a checkpoint hold up training?

For a train state of about 100M parameters (plus Adam's two moments: ~1.2 GB), in one
process, round by round:
  - async:    jaxtrain's Checkpointer.save as the loop calls it (it returns while the
              files are written): the time the loop is blocked;
  - blocking: the same save, then waiting until it is on disk;
  - raw:      orbax's StandardCheckpointer saving the same arrays, waited for;
  - restore:  jaxtrain's Checkpointer.restore of the saved step into the same shardings.
Prints medians and ratios. Goal: async blocks the loop for at most 10% of the blocking
save.

    python scripts/bench_checkpoint.py [--params 100e6] [--rounds 3] [--dir /tmp/bench_ckpt]
"""

import argparse
import os
import shutil
import statistics
import time

import grain
import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp

from jaxtrain.checkpoints import checkpointer as checkpoint
from jaxtrain import step as step_lib


def make_state(num_params):
  """A TrainState whose params are four square kernels and their biases."""
  width = int((num_params / 4) ** 0.5)
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  params = {f"layer{i}": {"kernel": jax.random.normal(k, (width, width)), "bias": jnp.zeros(width)}
            for i, k in enumerate(keys)}
  tx = optax.adamw(1e-3)
  return step_lib.TrainState(step=jnp.array(100, jnp.int32), params=params, opt_state=tx.init(params),
                             rng=jax.random.PRNGKey(1), model_state={})


def timed(fn):
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--params", type=float, default=100e6)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--dir", default="/tmp/bench_checkpoint")
  args = parser.parse_args()
  state = make_state(int(args.params))
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  num_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  data = iter(grain.MapDataset.range(10).to_iter_dataset())
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}: {num_params / 1e6:.1f}M params, "
        f"state {num_bytes / 2**30:.2f} GiB")

  times = {"async": [], "blocking": [], "raw": [], "restore": []}
  for r in range(-1, args.rounds):  # Round -1 warms up (first-call costs) and is not counted.
    shutil.rmtree(args.dir, ignore_errors=True)
    ckpt = checkpoint.Checkpointer(os.path.join(args.dir, "run"), keep=10)
    times["async"].append(timed(lambda: ckpt.save(1, state, data, {"pending": []}, {})))
    ckpt.close()  # Waits; not the loop's time.
    ckpt = checkpoint.Checkpointer(os.path.join(args.dir, "run"), keep=10)
    times["blocking"].append(timed(lambda: (ckpt.save(2, state, data, {"pending": []}, {}), ckpt.close())))
    with ocp.StandardCheckpointer() as raw:
      times["raw"].append(timed(lambda: (raw.save(os.path.join(args.dir, "raw"), state), raw.wait_until_finished())))
    ckpt = checkpoint.Checkpointer(os.path.join(args.dir, "run"), keep=10)
    times["restore"].append(timed(lambda: jax.block_until_ready(ckpt.restore(2, abstract)[0])))
    ckpt.close()
    if r < 0:
      times = {k: [] for k in times}
      continue
    print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()), flush=True)
  shutil.rmtree(args.dir, ignore_errors=True)

  med = {k: statistics.median(v) for k, v in times.items()}
  print()
  print(f"loop blocked by an async save   {med['async']:.3f} s")
  print(f"blocking save                   {med['blocking']:.3f} s  ({num_bytes / 2**30 / med['blocking']:.2f} GiB/s)")
  print(f"raw orbax save                  {med['raw']:.3f} s")
  print(f"restore                         {med['restore']:.3f} s")
  print(f"async / blocking                {med['async'] / med['blocking']:.3f}  (goal <= 0.10)")
  print(f"blocking / raw orbax            {med['blocking'] / med['raw']:.3f}")
  print(f"restore / blocking save         {med['restore'] / med['blocking']:.3f}")


if __name__ == "__main__":
  main()
