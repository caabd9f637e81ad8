"""Checks jaxtrain's Qwen2, Qwen3 and Mistral families against transformers and peft, and
writes the references tests/lm/test_families.py compares with (no PyTorch there).

    /path/to/venv-with-torch-transformers-peft/bin/python scripts/check_families.py [--write-references]

For each family transformers builds a small model (2 layers, width 64, 300 ids; Qwen2 tied
with q/k/v biases, Qwen3 with qk-norm and head_dim 32 != 64 / 4 heads, Mistral with a
sliding window of 8, shorter than what it reads and writes) with random weights of a
visible size (norm scales near 1, biases too), rounds them to float16 and saves the
directory in float16: the committed form, which both sides compute in float32. Then, in
float32:
1. `jaxtrain.lm.load` of the directory: logits against transformers' (1e-4), greedy tokens
   of the KV-cache sampler (the prompts batched, so left-padded) against `generate`;
2. `export_hf`: transformers loads it as the family's class with the same logits, and
   jaxtrain loads it back with identical ones;
3. a LoRA on the family (tests/family_dirs.LORA, random adapters): `peft.save_peft`'s
   directory loaded by peft's PeftModel gives jaxtrain's merged logits, and its tensor
   names and shapes are those peft's own adapter state dict has;
4. Mistral without its window gives other logits, in transformers as here.
--write-references stores the directories (config.json, model.safetensors), transformers'
and peft's outputs (reference.npz) and peft's tensor names (peft_tensors.json) in
tests/data/families/. Exits non-zero on any mismatch.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import family_dirs  # pylint: disable=wrong-import-position
from check_hf_parity import torch_greedy, torch_logits  # pylint: disable=wrong-import-position  (beside this script)
import jaxtrain.lm  # pylint: disable=wrong-import-position
from jaxtrain.lm import language_model as lm_lib  # pylint: disable=wrong-import-position
from jaxtrain.lm import peft as peft_lib  # pylint: disable=wrong-import-position
from jaxtrain.models import lora  # pylint: disable=wrong-import-position

TOLERANCE = 1e-4
COMMON = dict(vocab_size=300, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=128, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0)
SPECS = {
    "qwen2": dict(num_key_value_heads=2, tie_word_embeddings=True,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    "qwen3": dict(num_key_value_heads=1, head_dim=32, tie_word_embeddings=True,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    "mistral": dict(num_key_value_heads=1, tie_word_embeddings=False, sliding_window=family_dirs.WINDOW,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
}


def build(family, directory, seed=0):
  """transformers' random model of `family`, weights rounded to float16, saved in float16."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  config_class = {"qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config,
                  "mistral": transformers.MistralConfig}[family]
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config_class(**COMMON, **SPECS[family]), dtype=torch.float32)
  with torch.no_grad():
    for name, param in model.named_parameters():
      if name.endswith("norm.weight"):  # Scales near 1, as trained ones are.
        value = 1 + 0.1 * torch.randn_like(param)
      else:  # Weights (and biases) large enough that each moves the logits.
        value = (0.3 if name.endswith(".bias") else 0.15) * torch.randn_like(param)
      param.copy_(value.half().float())
  model.to(torch.float16).save_pretrained(directory)
  return directory


def torch_model(directory):
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  return transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


class Report:
  def __init__(self):
    self.failed = 0
    self.figures = {}

  def check(self, what, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {what}: {detail}")
    self.failed += not ok

  def close(self, what, got, want):
    diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
    self.figures[what] = diff
    self.check(what, diff <= TOLERANCE, f"max |diff| = {diff:.2e}")


def check_family(family, work, report, references, peft_names):
  import peft  # pylint: disable=import-outside-toplevel
  made = os.path.join(work, "made")
  build(family, os.path.join(made, family))
  directory = family_dirs.make(os.path.join(work, family), family, source=made)
  reference = torch_model(directory)
  want = torch_logits(reference, family_dirs.TOKENS)
  greedy = [torch_greedy(reference, p, family_dirs.NEW_TOKENS) for p in family_dirs.PROMPTS]
  references[f"logits_{family}"] = want
  for i, tokens in enumerate(greedy):
    references[f"greedy_{family}_{i}"] = np.asarray(tokens, np.int32)

  lm = jaxtrain.lm.load(directory)
  report.close(f"{family}: logits of the directory", lm.logits(family_dirs.TOKENS), want)
  lm.sampler.eos_ids = ()  # transformers generated without stopping at EOS.
  ours = lm.sampler.generate(family_dirs.PROMPTS, family_dirs.NEW_TOKENS)
  report.check(f"{family}: greedy tokens (batched, left-padded)", ours == greedy,
               f"jaxtrain {ours} / transformers {greedy}")

  exported = os.path.join(work, family + "_exported")
  lm.export_hf(exported)
  back = torch_model(exported)
  report.check(f"{family}: export_hf is a {family_dirs.ARCHITECTURES[family]} to transformers",
               type(back).__name__ == family_dirs.ARCHITECTURES[family], type(back).__name__)
  report.close(f"{family}: export_hf in transformers", torch_logits(back, family_dirs.TOKENS), want)
  again = jaxtrain.lm.load(exported).logits(family_dirs.TOKENS)
  report.check(f"{family}: export_hf loads back identically", np.array_equal(again, lm.logits(family_dirs.TOKENS)),
               "bit for bit")

  module, params = family_dirs.lora_of(lm)
  merged = lora.merge(params, module.spec.scale)
  ours = np.asarray(module.base.apply({"params": merged}, family_dirs.TOKENS[:1], train=False)[0])
  adapter = os.path.join(work, family + "_peft")
  peft_lib.save_peft(adapter, lm.family, module.base, lm_lib.EXAMPLE, module.spec, params)
  adapted = peft.PeftModel.from_pretrained(torch_model(directory), adapter).eval()
  theirs = torch_logits(adapted, family_dirs.TOKENS[:1])
  references[f"peft_logits_{family}"] = theirs
  report.close(f"{family}: the LoRA export in peft vs jaxtrain merged", theirs, ours)
  moved = float(np.abs(theirs - want[:1]).max())
  report.check(f"{family}: the adapters move the logits", moved > 1e-2, f"max |diff| = {moved:.2e}")
  with open(os.path.join(adapter, "adapter_config.json"), encoding="utf-8") as f:
    targets = json.load(f)["target_modules"]
  fresh = peft.get_peft_model(torch_model(directory), peft.LoraConfig(
      r=module.spec.rank, lora_alpha=module.spec.alpha, target_modules=targets))
  expected = {f"{peft_lib.PREFIX}{name[len('base_model.model.'):]}": list(value.shape)
              for name, value in peft.get_peft_model_state_dict(fresh).items()}
  mine = {name: list(value.shape) for name, value in peft_lib.peft_tensors(lm.family, module.spec, params).items()}
  report.check(f"{family}: the LoRA tensors are peft's names and shapes", mine == expected,
               f"{len(mine)} tensors" if mine == expected else f"ours {sorted(mine)} / peft {sorted(expected)}")
  peft_names[family] = {"target_modules": targets, "tensors": expected}

  if family == "mistral":  # The window matters: without it both sides compute something else.
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
      config = json.load(f)
    unwindowed = os.path.join(work, "mistral_no_window")
    shutil.copytree(directory, unwindowed)
    with open(os.path.join(unwindowed, "config.json"), "w", encoding="utf-8") as f:
      json.dump({**config, "sliding_window": None}, f)
    full = torch_logits(torch_model(unwindowed), family_dirs.TOKENS)
    report.close("mistral without the window: jaxtrain vs transformers",
                 jaxtrain.lm.load(unwindowed).logits(family_dirs.TOKENS), full)
    differ = float(np.abs(full - want).max())
    report.check("mistral: the window changes transformers' logits", differ > 1e-2, f"max |diff| = {differ:.2e}")
    same = float(np.abs(full - want)[:, :family_dirs.WINDOW].max())
    report.check("mistral: ... and only past the window", same <= TOLERANCE, f"first {family_dirs.WINDOW}: {same:.2e}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--write-references", action="store_true", help="write the references into tests/data/families")
  args = parser.parse_args()
  try:
    import peft  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
  except ImportError:
    sys.exit("check_families needs transformers, PyTorch and peft: pip install -e '.[peft]'")
  print(f"transformers {transformers.__version__}, peft {peft.__version__}, torch {torch.__version__}")
  report, references, peft_names = Report(), {}, {}
  with tempfile.TemporaryDirectory() as work:
    for family in family_dirs.FAMILIES:
      check_family(family, work, report, references, peft_names)
    if args.write_references:
      for family in family_dirs.FAMILIES:
        target = os.path.join(family_dirs.DATA, family)
        shutil.rmtree(target, ignore_errors=True)
        os.makedirs(target)
        for name in ("config.json", "model.safetensors"):
          shutil.copy(os.path.join(work, "made", family, name), target)
      np.savez_compressed(os.path.join(family_dirs.DATA, "reference.npz"), **references)
      with open(os.path.join(family_dirs.DATA, "peft_tensors.json"), "w", encoding="utf-8") as f:
        json.dump(peft_names, f, indent=1, sort_keys=True)
      print(f"wrote {family_dirs.DATA}/")
  print("largest |diff| per check:", json.dumps(report.figures, indent=1))
  sys.exit(1 if report.failed else 0)


if __name__ == "__main__":
  main()
