"""Checks jaxtrain's Gemma 3 (jaxtrain.models.gemma3, lm.families.gemma3) against
transformers, and writes the reference tests/lm/test_gemma3.py compares with (no PyTorch there).

    /path/to/venv-with-torch-transformers/bin/python scripts/check_gemma3.py [--write-references]

transformers builds a small random Gemma3ForCausalLM (3 layers sliding, full, sliding; width
64, 2 heads of head_dim 32 != 64 / 2 with one KV head, query_pre_attn_scalar 24 != 32, a
window of 4 tokens, local RoPE base 100 and global 10000, norm weights w of N(0, 0.1^2) so
that each (1 + w) matters, 300 ids), rounds its weights to float16 and saves it so. In float32:
1. `jaxtrain.lm.load` of the directory: logits against transformers' (1e-4); greedy tokens
   of the KV-cache sampler (batched, so left-padded; the first prompt and all completions
   longer than the window) against `generate`;
2. `export_hf`: transformers loads a Gemma3ForCausalLM with the same logits; jaxtrain loads
   it back bit for bit;
3. with a window longer than the tokens both sides compute other logits, and agree.
--write-references stores config.json and model.safetensors in tests/data/families/gemma3/
and transformers' outputs in tests/data/families/gemma3_reference.npz. Exits non-zero on any
mismatch.
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
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import check_families  # pylint: disable=wrong-import-position
import family_dirs  # pylint: disable=wrong-import-position
import jaxtrain.lm  # pylint: disable=wrong-import-position

REFERENCE = os.path.join(family_dirs.DATA, "gemma3_reference.npz")
CONFIG = dict(vocab_size=300, hidden_size=64, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
              num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=24, sliding_window=4,
              layer_types=["sliding_attention", "full_attention", "sliding_attention"],
              rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                               "full_attention": {"rope_type": "default", "rope_theta": 10000.0}},
              max_position_embeddings=128, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def build(directory, seed=0):
  """transformers' random Gemma 3, weights rounded to float16, saved in float16."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  torch.manual_seed(seed)
  model = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(**CONFIG)).float()
  with torch.no_grad():
    for name, param in model.named_parameters():
      # Norms hold w of (1 + w). The embedding small, as trained ones are beside its sqrt(dim)
      # scale: a large one dominates the residual and the tied head repeats the last token.
      scale = 0.1 if name.endswith("norm.weight") else 0.02 if "embed_tokens" in name else 0.15
      param.copy_((scale * torch.randn_like(param)).half().float())
  model.to(torch.float16).save_pretrained(directory)
  return directory


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--write-references", action="store_true", help="write the reference into tests/data/families")
  args = parser.parse_args()
  import transformers  # pylint: disable=import-outside-toplevel
  print(f"transformers {transformers.__version__}")
  report, references = check_families.Report(), {}
  with tempfile.TemporaryDirectory() as work:
    made = build(os.path.join(work, "made", "gemma3"))
    directory = family_dirs.make(os.path.join(work, "gemma3"), "gemma3", source=os.path.join(work, "made"))
    reference = check_families.torch_model(directory)
    report.check("transformers builds a Gemma3ForCausalLM", type(reference).__name__ == "Gemma3ForCausalLM",
                 type(reference).__name__)
    want = check_families.torch_logits(reference, family_dirs.TOKENS)
    greedy = [check_families.torch_greedy(reference, p, family_dirs.NEW_TOKENS) for p in family_dirs.PROMPTS]
    references["logits"] = want
    for i, tokens in enumerate(greedy):
      references[f"greedy_{i}"] = np.asarray(tokens, np.int32)

    lm = jaxtrain.lm.load(directory)
    report.close("logits of the directory", lm.logits(family_dirs.TOKENS), want)
    lm.sampler.eos_ids = ()
    ours = lm.sampler.generate(family_dirs.PROMPTS, family_dirs.NEW_TOKENS)
    report.check("greedy tokens (batched, left-padded, past the window)", ours == greedy,
                 f"jaxtrain {ours} / transformers {greedy}")

    exported = os.path.join(work, "exported")
    lm.export_hf(exported)
    back = check_families.torch_model(exported)
    report.check("export_hf is a Gemma3ForCausalLM to transformers", type(back).__name__ == "Gemma3ForCausalLM",
                 type(back).__name__)
    report.close("export_hf in transformers", check_families.torch_logits(back, family_dirs.TOKENS), want)
    again = jaxtrain.lm.load(exported).logits(family_dirs.TOKENS)
    report.check("export_hf loads back identically", np.array_equal(again, lm.logits(family_dirs.TOKENS)),
                 "bit for bit")

    unwindowed = os.path.join(work, "no_window")
    shutil.copytree(directory, unwindowed)
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
      config = json.load(f)
    with open(os.path.join(unwindowed, "config.json"), "w", encoding="utf-8") as f:
      json.dump({**config, "sliding_window": 64}, f)  # Longer than TOKENS (transformers refuses null).
    full = check_families.torch_logits(check_families.torch_model(unwindowed), family_dirs.TOKENS)
    report.close("without the window: jaxtrain vs transformers", jaxtrain.lm.load(unwindowed).logits(family_dirs.TOKENS),
                 full)
    differ = float(np.abs(full - want).max())
    report.check("the window changes transformers' logits", differ > 1e-2, f"max |diff| = {differ:.2e}")
    references["logits_no_window"] = full

    if args.write_references:
      target = os.path.join(family_dirs.DATA, "gemma3")
      shutil.rmtree(target, ignore_errors=True)
      os.makedirs(target)
      for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(made, name), target)
      np.savez_compressed(REFERENCE, **references)
      print(f"wrote {target}/ and {REFERENCE}")
  print("largest |diff| per check:", json.dumps(report.figures, indent=1))
  sys.exit(1 if report.failed else 0)


if __name__ == "__main__":
  main()
