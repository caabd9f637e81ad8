"""Checks jaxtrain's Llama against Hugging Face transformers' LlamaForCausalLM, and writes
the reference outputs that tests/test_hf_llama.py compares with (no transformers there).

    pip install -e '.[hf]'     # transformers and PyTorch: heavy, never needed otherwise
    python scripts/check_hf_parity.py [--run=runs/code_lm] [--write]

For each small model of tests/hf_dirs.py (grouped-query attention with tied embeddings;
untied with Llama 3.1 rope scaling) it checks, in float32:
1. transformers on the directory: its logits and greedy tokens (`generate`) against
   `jaxtrain.lm.load` of the same directory (logits to 1e-4, tokens equal);
2. the directory as transformers itself saves it (`save_pretrained`) loads in jaxtrain with
   the same logits;
3. `export_hf` of the jaxtrain model loads in transformers with the same logits.
With --run, also a trained run: `export_hf` loads in transformers with the same logits on
real text, and transformers' tokenizer (AutoTokenizer) gives jaxtrain's ids (for a
tokenizer.json; a SentencePiece tokenizer.model is only reported: transformers re-derives
its pre-tokenizing and splits differently).
--write stores transformers' outputs in tests/data/hf_parity.npz, and the config.json
transformers writes in tests/data/, for the tests. Exits non-zero on any mismatch.
"""

import argparse
import os
import shutil
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import hf_dirs  # pylint: disable=wrong-import-position
import jaxtrain.lm  # pylint: disable=wrong-import-position

TOLERANCE = 1e-4
DATA = os.path.join(ROOT, "tests", "data")


def torch_model(directory):
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  model = transformers.LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32)
  return model.eval()


def torch_logits(model, tokens):
  import torch  # pylint: disable=import-outside-toplevel
  with torch.no_grad():
    return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.float().numpy()


def torch_greedy(model, prompt, new_tokens):
  import torch  # pylint: disable=import-outside-toplevel
  with torch.no_grad():
    out = model.generate(torch.as_tensor([prompt]), max_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                         pad_token_id=0)
  return out[0, len(prompt):].tolist()


class Report:
  def __init__(self):
    self.failed = 0

  def check(self, what, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {what}: {detail}")
    self.failed += not ok


def check_variant(variant, work, report, references):
  directory = hf_dirs.make(os.path.join(work, variant), variant)
  reference = torch_model(directory)
  want = torch_logits(reference, hf_dirs.TOKENS)
  greedy = [torch_greedy(reference, p, hf_dirs.NEW_TOKENS) for p in hf_dirs.PROMPTS]
  references[f"logits_{variant}"] = want
  for i, tokens in enumerate(greedy):
    references[f"greedy_{variant}_{i}"] = np.asarray(tokens, np.int32)

  lm = jaxtrain.lm.load(directory)
  got = lm.logits(hf_dirs.TOKENS)
  report.check(f"{variant}: logits of the directory", np.abs(got - want).max() <= TOLERANCE,
               f"max |jaxtrain - transformers| = {np.abs(got - want).max():.2e}")
  lm.sampler.eos_ids = ()  # transformers ran without EOS: compare all new tokens.
  ours = lm.sampler.generate(hf_dirs.PROMPTS, hf_dirs.NEW_TOKENS)
  report.check(f"{variant}: greedy tokens", ours == greedy, f"jaxtrain {ours} / transformers {greedy}")

  saved = os.path.join(work, variant + "_saved_by_transformers")
  reference.save_pretrained(saved)
  for name in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(directory, name), saved)
  shutil.copy(os.path.join(saved, "config.json"), os.path.join(work, f"transformers_config_{variant}.json"))
  got = jaxtrain.lm.load(saved).logits(hf_dirs.TOKENS)
  report.check(f"{variant}: logits of transformers' save_pretrained", np.abs(got - want).max() <= TOLERANCE,
               f"max diff {np.abs(got - want).max():.2e}")

  exported = os.path.join(work, variant + "_exported")
  lm.export_hf(exported)
  back = torch_logits(torch_model(exported), hf_dirs.TOKENS)
  report.check(f"{variant}: export_hf loads in transformers", np.abs(back - want).max() <= TOLERANCE,
               f"max diff {np.abs(back - want).max():.2e}")


def check_run(run, work, report):
  import transformers  # pylint: disable=import-outside-toplevel
  lm = jaxtrain.lm.load(run)
  exported = os.path.join(work, "run_exported")
  lm.export_hf(exported)
  text = 'def greet(name):\n    """Say hello."""\n    return f"Hello, {name}!"\n'
  ids = [lm.tokenizer.bos_id] + lm.tokenizer.encode(text)
  scored = ids[:lm.context_length]
  want = lm.logits([scored])
  got = torch_logits(torch_model(exported), [scored])
  report.check(f"{run}: export_hf logits in transformers", np.abs(got - want).max() <= TOLERANCE,
               f"max diff {np.abs(got - want).max():.2e} over {len(scored)} tokens")
  hf_ids = transformers.AutoTokenizer.from_pretrained(exported).encode(text, add_special_tokens=False)
  detail = (f"{len(hf_ids)} vs {len(ids) - 1} ids, first difference at "
            f"{next((i for i, (a, b) in enumerate(zip(hf_ids, ids[1:])) if a != b), None)}")
  if lm.tokenizer.kind == "sentencepiece":
    # Known (docs/language_models.md): transformers converts tokenizer.model with its own pre-tokenizing,
    # which does not reproduce jaxtrain's lossless code settings. Reported, not failed.
    print(f"note {run}: transformers' tokenizer from tokenizer.model: {detail}")
  else:
    report.check(f"{run}: transformers' tokenizer gives jaxtrain's ids", hf_ids == ids[1:], detail)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--run", help="also check a trained jaxtrain work directory")
  parser.add_argument("--write", action="store_true", help="write the references into tests/data")
  args = parser.parse_args()
  try:
    import transformers  # pylint: disable=import-outside-toplevel
  except ImportError:
    sys.exit("check_hf_parity needs transformers and PyTorch: pip install -e '.[hf]'")
  print(f"transformers {transformers.__version__}")
  report, references = Report(), {}
  with tempfile.TemporaryDirectory() as work:
    for variant in hf_dirs.VARIANTS:
      check_variant(variant, work, report, references)
    if args.run:
      check_run(args.run, work, report)
    if args.write:
      os.makedirs(DATA, exist_ok=True)
      np.savez_compressed(os.path.join(DATA, "hf_parity.npz"), **references)
      for variant in hf_dirs.VARIANTS:
        shutil.copy(os.path.join(work, f"transformers_config_{variant}.json"), DATA)
      print(f"wrote {DATA}/hf_parity.npz and transformers' config.json files")
  sys.exit(1 if report.failed else 0)


if __name__ == "__main__":
  main()
