"""Does pre-training transfer to new classes? Few-shot probes of the digits 5-9 on a CNN
pre-trained on the digits 0-4, on the same network at initialisation, and on raw pixels.

    python scripts/fewshot_transfer.py                    # ~20 s on 2 CPU cores
    python scripts/fewshot_transfer.py --mirror           # pre-trained on 5-9, probed on 0-4
    python scripts/fewshot_transfer.py --mirror --l2_sweep  # how the default l2_reg was chosen

1. Pre-training is the user's command, `python -m jaxtrain.launch
   --config=experiments/digits_transfer.py --workdir=DIR`; its evaluators `fewshot`
   (pre-logits), `fewshot_conv` (the flattened conv features, the dense layer's input) and
   `fewshot_pixels` (representation='input') write their rows to DIR/metrics.jsonl every
   10 epochs. A DIR that holds a finished run is reused as it is.
2. The random network is the same config's model at initialisation (config.seed: the very
   network pre-training started from). No checkpoint holds it, so this script builds the
   evaluators as `--mode=eval` does (jaxtrain/evaluate.py) and runs them on the variables
   of `step.init_variables`.
3. It prints a markdown table: test accuracy, mean ± std over the probe's seeds.
"""

import argparse
import functools
import importlib.util
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = os.path.join(ROOT, "experiments", "digits_transfer.py")
SHOTS = (1, 5, 10, 25)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  parser.add_argument("--workdir", default=None, help="Default: runs/fewshot_transfer[_mirror].")
  parser.add_argument("--mirror", action="store_true", help="Pre-train on 5-9, probe 0-4.")
  parser.add_argument("--l2_sweep", action="store_true", help="Also probe each representation over a range of l2_reg.")
  parser.add_argument("--sweep_seeds", type=int, default=20)
  args = parser.parse_args()
  arg = "mirror" if args.mirror else ""
  workdir = args.workdir or os.path.join("runs", "fewshot_transfer" + ("_mirror" if args.mirror else ""))
  start = time.perf_counter()

  command = [sys.executable, "-m", "jaxtrain.launch", f"--config={EXPERIMENT}" + (f":{arg}" if arg else ""),
             f"--workdir={workdir}"]
  print("$ python", " ".join(command[1:]), flush=True)
  subprocess.run(command, cwd=ROOT, check=True)
  trained_s = time.perf_counter() - start
  rows = _rows(workdir)

  untrained_start = time.perf_counter()
  built = Built(arg)
  at_init = built.run(built.fresh_variables())
  untrained_s = time.perf_counter() - untrained_start

  pixels = _last(rows, "fewshot_pixels")
  again = {k.split("/", 1)[1]: v for k, v in at_init.items() if k.startswith("fewshot_pixels/")}
  assert again == pixels, "the pixel probe does not depend on the model: it must repeat exactly"
  def init(prefix):
    return {k.split("/", 1)[1]: v for k, v in at_init.items() if k.startswith(prefix + "/")}

  table = [("pre-trained, conv features", _last(rows, "fewshot_conv")),
           ("random init, conv features", init("fewshot_conv")),
           ("pre-trained, pre-logits", _last(rows, "fewshot")), ("random init, pre-logits", init("fewshot")),
           ("pixels", pixels)]
  dataset = next(k for k in table[0][1] if k.endswith("_1shot") and not k.startswith("mean")).rsplit("_", 1)[0]
  print(f"\nFew-shot test accuracy on {dataset} (mean ± std over seeds; "
        f"val accuracy on the pre-training digits: pre-trained {_last(rows, 'val')['accuracy']:.4f}, "
        f"random init {at_init['val/accuracy']:.4f}):\n")
  print("| features | " + " | ".join(f"{k}-shot" for k in SHOTS) + " |")
  print("| --- |" + " --- |" * len(SHOTS))
  for name, result in table:
    cells = [f"{result[f'{dataset}_{k}shot']:.3f} ± {result[f'{dataset}_{k}shot_std']:.3f}" for k in SHOTS]
    print(f"| {name} | " + " | ".join(cells) + " |")

  print("\nPre-trained features over pre-training (mean over seeds):\n")
  print("| features | step | epoch | " + " | ".join(f"{k}-shot" for k in SHOTS) + " |")
  print("| --- | --- | --- |" + " --- |" * len(SHOTS))
  epochs = {r["step"]: r["train/epoch"] for r in rows if "train/epoch" in r}
  for name, prefix in (("conv features", "fewshot_conv"), ("pre-logits", "fewshot")):
    for row in (r for r in rows if f"{prefix}/{dataset}_1shot" in r):
      cells = [f"{row[f'{prefix}/{dataset}_{k}shot']:.3f}" for k in SHOTS]
      print(f"| {name} | {row['step']} | {epochs.get(row['step'], float('nan')):g} | " + " | ".join(cells) + " |")
  print(f"\nWall time: {time.perf_counter() - start:.1f} s (pre-training command {trained_s:.1f} s, "
        f"random-init evaluation {untrained_s:.1f} s).")
  if args.l2_sweep:
    _l2_sweep(built, workdir, args.sweep_seeds)


class Built:
  """The experiment's data, model and evaluators, built as `--mode=eval` builds them."""

  def __init__(self, arg):
    from jaxtrain import config as config_lib  # pylint: disable=import-outside-toplevel
    from jaxtrain.training import build as build_lib
    spec = importlib.util.spec_from_file_location("digits_transfer", EXPERIMENT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = config_lib.Reader(module.get_config(arg))
    self.strategy, _ = build_lib.build_strategy(cfg)
    self.seed = cfg.get("seed", 0)
    data = build_lib.build_data(cfg, self.strategy, self.seed)
    self.model = build_lib.build_model(cfg, data)
    self.abstract = build_lib.abstract_variables(self.strategy, self.model, self.seed)
    self.evaluators = {s.name: s.evaluator for s in
                       build_lib.build_evaluators(cfg, self.strategy, self.model, data, self.abstract)}

  def fresh_variables(self):
    from jaxtrain import step  # pylint: disable=import-outside-toplevel
    init = functools.partial(step.init_variables, self.model.module, self.model.example_inputs, self.seed)
    return self.strategy.init(init, self.abstract)

  def saved_variables(self, workdir):
    from jaxtrain.checkpoints import checkpointer as checkpoint  # pylint: disable=import-outside-toplevel
    ckpt = checkpoint.Checkpointer(workdir, read_only=True)
    try:
      return ckpt.restore_variables(ckpt.all_steps()[-1], self.abstract)
    finally:
      ckpt.close()

  def run(self, variables):
    return {f"{name}/{k}": v for name, evaluator in self.evaluators.items()
            for k, v in evaluator.run(variables).items()}


def _l2_sweep(built, workdir, num_seeds):
  """Mean test accuracy over `num_seeds` seeds for l2_reg = 2^-2 ... 2^10, per representation."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jaxtrain.evals import linear_probes as fewshot  # pylint: disable=import-outside-toplevel
  fresh, saved = built.fresh_variables(), built.saved_variables(workdir)
  features = {"pre-trained, conv features": built.evaluators["fewshot_conv"].features(saved),
              "random init, conv features": built.evaluators["fewshot_conv"].features(fresh),
              "pre-trained, pre-logits": built.evaluators["fewshot"].features(saved),
              "random init, pre-logits": built.evaluators["fewshot"].features(fresh),
              "pixels": built.evaluators["fewshot_pixels"].features(fresh)}
  grid = [2.0 ** k for k in range(-2, 11)]
  print(f"\nl2_reg sweep ({num_seeds} seeds; the default is {fewshot.DEFAULT_L2_REG:g}):\n")
  print("| features | shots | " + " | ".join(f"{l2:g}" for l2 in grid) + " |")
  print("| --- | --- |" + " --- |" * len(grid))
  for name, per_dataset in features.items():
    for splits in per_dataset.values():
      train, test = splits["train"], splits["test"]
      for shots in SHOTS:
        accuracy = [np.mean([fewshot.probe_accuracy(train["features"], train["label"], test["features"],
                                                    test["label"], shots, seed, l2) for seed in range(num_seeds)])
                    for l2 in grid]
        print(f"| {name} | {shots} | " + " | ".join(f"{a:.3f}" for a in accuracy) + " |")


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _last(rows, prefix):
  """The newest row's values of evaluator `prefix`, without the prefix."""
  row = [r for r in rows if any(k.startswith(prefix + "/") for k in r)][-1]
  return {k.split("/", 1)[1]: v for k, v in row.items() if k.startswith(prefix + "/")}


if __name__ == "__main__":
  main()
