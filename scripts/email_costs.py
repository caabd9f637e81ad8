"""What the email assistant costs, as the textbook tabulates it: the dry run (`--mode=dry_run`)
of experiments/email_assistant.py for SmolLM2-135M and for a 7B Llama of the same recipe.

    python scripts/email_costs.py --model="$(python scripts/fetch_model.py smollm2-135m-instruct)" \
        --mailbox=mail/sam.mbox [--accelerator=h100] [--measured=runs/email]

Prints each dry run's report (parameters, FLOPs per step, memory per device, the whole
run's chip-hours and dollars on every accelerator of its table), then one table side by
side: the whole run's tokens, FLOPs, memory per device, and chip time and cost on
--accelerator at 40% of its peak; with --measured (a finished run of the same config on
this machine), its wall time beside them.

The 7B model is Llama 2 7B's shape (32 layers of 4,096, 32 heads, MLP 11,008) with
SmolLM2's tokenizer (49,152 tokens rather than 32,000: 0.14 B more parameters), so that
both read the same tokens; the same LoRA recipe, with the frozen base held in bfloat16
(lora.base_dtype, as one would) and bfloat16 computation. Nothing is trained or written;
a dry run only compiles (the 7B step in about a minute on 2 CPU cores).
"""

import argparse
import copy
import importlib.util
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from jaxtrain.modes import dry_run  # noqa: E402  pylint: disable=wrong-import-position
# The report's own formatting, so that the summary reads as the report does.
from jaxtrain.modes.dry_run import _bytes, _duration, _flops, _money  # noqa: E402  pylint: disable=all
from jaxtrain.training import init_from  # noqa: E402  pylint: disable=wrong-import-position

LLAMA_7B = dict(name="llama", vocab_size=49152, dim=4096, num_layers=32, num_heads=32, num_kv_heads=32,
                mlp_dim=11008, rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=False, dtype="bfloat16",
                residual_dropout=0.0, scan_layers=True, remat="full")


def assistant_config(mailbox):
  spec = importlib.util.spec_from_file_location("email_assistant",
                                                os.path.join(ROOT, "experiments", "email_assistant.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(mailbox)


def configs(model, mailbox):
  """{name: config}: the assistant from `model` (a GGUF file or Hugging Face directory), and
  the 7B shape with the same data, tokenizer and recipe."""
  small = assistant_config(mailbox)
  small.init_from["hf_dir" if os.path.isdir(model) else "gguf"] = os.path.abspath(model)
  resolved = init_from.resolve_model(small)  # The source's model section and tokenizer.
  big = copy.deepcopy(resolved)
  del big["init_from"]
  big.model = dict(LLAMA_7B)
  big.lora.base_dtype = "bfloat16"
  return {"SmolLM2-135M (LoRA)": small, "Llama 7B shape (LoRA)": big}


def measured_seconds(run):
  """Training's wall time of a finished run (its last train/train_seconds)."""
  path = os.path.join(run, "metrics.jsonl")
  if not os.path.exists(path):
    raise SystemExit(f"--measured={run} has no metrics.jsonl: give a finished run of the email assistant")
  with open(path, encoding="utf-8") as f:
    seconds = [row["train/train_seconds"] for row in map(json.loads, filter(str.strip, f))
               if "train/train_seconds" in row]
  return seconds[-1] if seconds else None


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  parser.add_argument("--model", required=True, help="SmolLM2's GGUF file (or a Hugging Face directory).")
  parser.add_argument("--mailbox", required=True, help="The mbox the assistant trains on.")
  parser.add_argument("--accelerator", default="h100", help="Whose chip time and cost the summary shows.")
  parser.add_argument("--measured", default=None, help="A finished run of the small config on this machine.")
  args = parser.parse_args()
  rows = []
  for name, config in configs(args.model, args.mailbox).items():
    print(f"\n===== {name} =====", flush=True)
    with tempfile.TemporaryDirectory() as workdir:
      report = dry_run.run(config, os.path.join(workdir, "run"), accelerator=args.accelerator)
    target, memory = report["run"]["target"], report["memory"]
    tokens = report["flops"]["tokens_per_step"] * report["total_steps"]
    rows.append((name, f"{report['parameters']['total'] / 1e6:,.0f} M", f"{report['parameters']['trainable']:,}",
                 f"{tokens:,}", _flops(report["run"]["total_flops"]), _bytes(memory["total"]) if memory else "?",
                 _duration(target["hours"]), _money(target["cost"])))
  print(f"\nThe whole run on one {args.accelerator} at {dry_run.TYPICAL_UTILIZATION:.0%} of its peak:")
  print("| model | parameters | trainable | tokens | FLOPs | memory per device | chip time | cost |")
  print("|---|---|---|---|---|---|---|---|")
  for row in rows:
    print("| " + " | ".join(row) + " |")
  if args.measured:
    seconds = measured_seconds(args.measured)
    print(f"Measured on this machine ({os.cpu_count()} CPU cores), {args.measured}: "
          + (f"{seconds / 60:.1f} min of training." if seconds else "no timed rows."))


if __name__ == "__main__":
  main()
