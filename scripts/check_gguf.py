"""Checks jaxtrain's GGUF reading and writing against transformers on a real model.

    pip install -e '.[hf]'     # transformers, PyTorch and accelerate: never needed otherwise
    python scripts/check_gguf.py [--gguf=PATH] [--new_tokens=40]

Default --gguf: SmolLM2-135M-Instruct (scripts/fetch_model.py fetches it). transformers
reads the same file (`GgufConfig(dequantize=True)`: the same dequantized weights) and
the checks are:
1. token ids: jaxtrain's tokenizer from the GGUF metadata and transformers'
   `AutoTokenizer.from_pretrained(dir, gguf_file=...)` on prompts with code, digits,
   unicode and chat markup;
2. logits of those prompts to 1e-3 (float32 both);
3. greedy text for a chat prompt given as a rendered string (`lm.generate(text)`) and as
   messages (`lm.chat(messages)` against `apply_chat_template` + `generate`);
4. `LM.export_gguf(outtype="f32")` read back by transformers gives the logits transformers
   gives for the original file to 1e-6 (the export loses nothing), hence jaxtrain's to
   the tolerance of 2.
Prints a report; exits non-zero on any mismatch. scripts/check_llama_cpp.py runs the export
in llama.cpp itself.
"""

import argparse
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import fetch_model  # pylint: disable=wrong-import-position

PROMPTS = [
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "In 2024 the budget grew 17.5% to $3,141,592; café, naïve, 東京, emoji 🎉.",
    "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
]
CHAT = [{"role": "user", "content": "Write my manager an email about the Q3 budget."}]
LOGIT_TOLERANCE, EXPORT_TOLERANCE = 1e-3, 1e-6


def transformers_model(path):
  import torch  # pylint: disable=import-outside-toplevel
  from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig  # pylint: disable=import-outside-toplevel
  directory, name = os.path.split(path)
  tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
  model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32,
                                               quantization_config=GgufConfig(gguf_file=name, dequantize=True))
  return tokenizer, model.eval()


def torch_logits(model, ids):
  import torch  # pylint: disable=import-outside-toplevel
  with torch.no_grad():
    return model(torch.tensor([ids])).logits[0].numpy()


def torch_greedy(model, tokenizer, ids, new_tokens):
  import torch  # pylint: disable=import-outside-toplevel
  with torch.no_grad():
    out = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False)
  return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--gguf", default=None, help="a .gguf file (default: SmolLM2-135M-Instruct, fetched)")
  parser.add_argument("--new_tokens", type=int, default=40)
  args = parser.parse_args(argv)
  path = args.gguf or fetch_model.fetch("smollm2-135m-instruct", fetch_model.default_cache_dir())
  import jaxtrain.lm  # pylint: disable=import-outside-toplevel
  failures = []

  def check(ok, line):
    print(("ok    " if ok else "FAIL  ") + line)
    if not ok:
      failures.append(line)

  lm = jaxtrain.lm.load(path)
  hf_tokenizer, hf_model = transformers_model(path)
  print(f"{lm}\ntransformers: {type(hf_model).__name__}")

  worst = 0.0
  for prompt in PROMPTS:
    ids = lm.tokenizer.encode(prompt, special_tokens=True)
    theirs = hf_tokenizer(prompt, add_special_tokens=False).input_ids
    check(ids == theirs, f"token ids of {prompt[:30]!r}: {len(ids)} tokens" + ("" if ids == theirs else
                                                                               f" vs {len(theirs)}"))
    diff = float(np.abs(lm.logits([ids])[0] - torch_logits(hf_model, ids)).max())
    worst = max(worst, diff)
  check(worst <= LOGIT_TOLERANCE, f"logits: max |jaxtrain - transformers| = {worst:.2e} (<= {LOGIT_TOLERANCE})")

  rendered = hf_tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
  from jaxtrain.data import chat  # pylint: disable=import-outside-toplevel
  ours_rendered = chat.render_for(lm.tokenizer, CHAT, add_generation_prompt=True)
  check(ours_rendered == rendered, "chat template rendering equals transformers'")
  theirs = torch_greedy(hf_model, hf_tokenizer, hf_tokenizer(rendered, add_special_tokens=False).input_ids,
                        args.new_tokens)
  ours = lm.generate(rendered, max_new_tokens=args.new_tokens)
  check(ours == theirs, f"greedy text of the rendered prompt ({args.new_tokens} tokens): {ours[:60]!r}...")
  ids = hf_tokenizer.apply_chat_template(CHAT, tokenize=True, add_generation_prompt=True, return_dict=False)
  ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
  theirs = torch_greedy(hf_model, hf_tokenizer, ids, args.new_tokens)
  ours = lm.chat(CHAT, max_new_tokens=args.new_tokens)
  check(ours == theirs, "lm.chat(messages) equals apply_chat_template + generate")

  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "export-f32.gguf")
    lm.export_gguf(out, outtype="f32")
    _, exported = transformers_model(out)
    for prompt in PROMPTS:
      ids = lm.tokenizer.encode(prompt, special_tokens=True)
      again = torch_logits(exported, ids)
      same = float(np.abs(again - torch_logits(hf_model, ids)).max())
      ours = float(np.abs(lm.logits([ids])[0] - again).max())
      check(same <= EXPORT_TOLERANCE and ours <= LOGIT_TOLERANCE,
            f"export_gguf(f32) read by transformers, {len(ids)} tokens: {same:.1e} from transformers on the original "
            f"(<= {EXPORT_TOLERANCE}), {ours:.2e} from jaxtrain")
  print("all checks passed" if not failures else f"{len(failures)} checks failed")
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
