"""Checks jaxtrain's LoRA against the `peft` library, and writes the reference outputs that
tests/models/test_lora.py compares with (no PyTorch, transformers or peft there).

    pip install -e '.[peft]'     # transformers, PyTorch and peft: heavy, never needed otherwise
    python scripts/check_peft.py [--write]

It fine-tunes the untied Llama of tests/hf_dirs.py (float32; adapters on q_proj, v_proj,
down_proj, lm_head and layer 1's k_proj alone, which PEFT's config names in full) for 20
steps with `config.lora` (dropout 0.1) on a few standard-library modules, then checks,
on hf_dirs.TOKENS:
1. `export --format=peft` loaded by peft (`PeftModel.from_pretrained` on the base
   directory) gives jaxtrain's logits (`jaxtrain.lm.load` of the run, merged) to 1e-4;
2. peft's own `merge_and_unload` does too;
3. `export --format=hf` (merged) loaded by transformers does too.
--write stores the adapter directory in tests/data/peft_adapter/ and peft's logits in
tests/data/peft_logits.npz. Exits non-zero on any mismatch.
"""

import argparse
import json
import os
import shutil
import sys
import sysconfig
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import check_hf_parity  # pylint: disable=wrong-import-position  (beside this script: its Report, torch_logits)
from check_hf_parity import DATA, TOLERANCE, torch_logits, torch_model  # pylint: disable=wrong-import-position
VARIANT = "untied_llama3"
TARGETS = ("q_proj", "v_proj", "mlp/down_proj", "lm_head", "layers_1/self_attn/k_proj")  # The last: one layer.
# tests/conftest.py's LM_MODULES: the text the LoRA fine-tune trains on.
MODULES = ("textwrap.py", "shlex.py", "fnmatch.py", "glob.py", "bisect.py", "heapq.py", "colorsys.py", "keyword.py",
           "calendar.py", "string.py", "copy.py", "queue.py", "locale.py", "gettext.py")


def lora_config(corpus, hf, steps=20):
  """tests/tiny_lm.py fine-tuning `hf` with LoRA (rank 4, alpha 8)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  from jaxtrain.lm import hf as hf_lib  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location("tiny_lm", os.path.join(ROOT, "tests", "tiny_lm.py"))
  tiny_lm = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tiny_lm)
  config = tiny_lm.get_config(corpus)
  _, kwargs, _ = hf_lib.read_config(hf)
  config.total_steps, config.evals.val.every_steps, config.checkpoint.every_steps = steps, steps, steps
  config.input.data.tokenizer.vocab_size = 280  # At most the model's 300 ids.
  config.model = dict(name="llama", **kwargs)
  config.init_from = dict(hf_dir=hf)
  config.optimizer.lr = 1e-2
  config.lora = dict(rank=4, alpha=8.0, dropout=0.1, targets=TARGETS)
  return config


class Report(check_hf_parity.Report):
  def close(self, what, got, want):
    diff = float(np.abs(got - want).max())
    self.check(what, got.shape == want.shape and diff <= TOLERANCE, f"max |diff| = {diff:.2e}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--write", action="store_true", help="write the references into tests/data")
  args = parser.parse_args()
  try:
    import peft  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
  except ImportError:
    sys.exit("check_peft needs transformers, PyTorch and peft: pip install -e '.[peft]'")
  print(f"peft {peft.__version__}, transformers {transformers.__version__}, torch {torch.__version__}")
  report = Report()
  with tempfile.TemporaryDirectory() as work:
    os.environ["TFDS_DATA_DIR"] = os.path.join(work, "data")  # The tokenizer and token caches.
    import hf_dirs  # pylint: disable=import-outside-toplevel
    from jaxtrain.lm import export  # pylint: disable=import-outside-toplevel
    from jaxtrain.lm import language_model as lm
    from jaxtrain import train
    corpus = os.path.join(work, "corpus")
    os.makedirs(corpus)
    for name in MODULES:
      shutil.copy(os.path.join(sysconfig.get_paths()["stdlib"], name), corpus)
    hf = hf_dirs.make(os.path.join(work, "base"), VARIANT)
    run = os.path.join(work, "run")
    train.run(lora_config(corpus, hf), run)
    ours = lm.load(run).logits(hf_dirs.TOKENS)
    export.export(run, "peft", os.path.join(work, "peft"))
    export.export(run, "hf", os.path.join(work, "merged"))

    base = torch_model(hf)
    adapted = peft.PeftModel.from_pretrained(base, os.path.join(work, "peft")).eval()
    theirs = torch_logits(adapted, hf_dirs.TOKENS)
    report.close("export --format=peft in peft vs jaxtrain", theirs, ours)
    moved = float(np.abs(ours - lm.load(hf).logits(hf_dirs.TOKENS)).max())
    report.check("the fine-tune moved the logits away from the base", moved > 1e-3, f"max |diff| = {moved:.2e}")
    report.close("peft's merge_and_unload vs jaxtrain", torch_logits(adapted.merge_and_unload(), hf_dirs.TOKENS),
                 ours)
    merged = torch_model(os.path.join(work, "merged"))
    report.close("export --format=hf in transformers vs jaxtrain", torch_logits(merged, hf_dirs.TOKENS), ours)
    if args.write:
      target = os.path.join(DATA, "peft_adapter")
      shutil.rmtree(target, ignore_errors=True)
      shutil.copytree(os.path.join(work, "peft"), target)
      with open(os.path.join(target, "adapter_config.json"), encoding="utf-8") as f:
        config = json.load(f)
      config["base_model_name_or_path"] = None  # A temporary directory: tests/hf_dirs.py makes it again.
      with open(os.path.join(target, "adapter_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
      np.savez_compressed(os.path.join(DATA, "peft_logits.npz"), logits=theirs)
      print(f"wrote {target}/ and {DATA}/peft_logits.npz")
  sys.exit(1 if report.failed else 0)


if __name__ == "__main__":
  main()
