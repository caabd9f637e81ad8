"""Checks the GGUF files jaxtrain writes against llama.cpp itself (llama-cpp-python), and
writes the reference that tests/lm/test_gguf.py compares with (no llama.cpp there).

    pip install -e '.[llama_cpp]'     # llama-cpp-python, built from source: heavy, never needed otherwise
    python scripts/check_llama_cpp.py [--write]
    python scripts/check_llama_cpp.py --gguf=PATH [--prompt=TEXT ...] [--new_tokens=N]

Default: two tiny models with a fixed seed and weights large enough that greedy decoding has
no near-ties: `reference_model` (tests/hf_dirs.py's 'gqa_tied' shape, its byte-level BPE
tokenizer with chat tokens and a chat template added; llama.cpp's 'gpt2' vocabulary) and
`spm_model` (the same shape with a SentencePiece BPE tokenizer.model; 'llama'), exported
by `LM.export_gguf` (CASES: the first in f32 and f16, the second in f32). For each file,
llama.cpp against `jaxtrain.lm.load` of the same file:
1. the ids of PROMPTS and TEXTS (special tokens parsed, BOS where the file's add_bos_token
   says);
2. the greedy continuation of NEW_TOKENS tokens (llama.cpp's sampler at top_k=1, temp 0),
   with the smallest top-2 logit gap along jaxtrain's path (a near-tie makes a mismatch
   meaningless: reported, and f16 is held to the tokens only where the gap is wide);
3. the last position's logits: the largest difference (within LOGIT_TOLERANCE). llama.cpp
   keeps its KV cache in f32 here (its default, f16, is a difference of its own).
It also reports whether llama.cpp loads an export whose embedding has more rows than the
tokenizer has ids (hf_dirs' own 'gqa_tied').
--write stores llama.cpp's ids, continuations and f32 last-position logits, with a digest
of the exported tensors, in tests/data/llama_cpp_reference.json.

--gguf=PATH: any GGUF jaxtrain reads (SmolLM2-135M-Instruct.Q4_1.gguf, say). The ids of the
prompts and TEXTS from llama.cpp on the file itself against jaxtrain's tokenizer of it;
then jaxtrain exports it in f32: llama.cpp's ids on the export must be its ids on the file,
and its greedy text on the export jaxtrain's (llama.cpp's on the original quantized file
is reported only: it multiplies quantized blocks with quantized activations there, so
near-ties may go either way).
Exits non-zero on any mismatch. llama.cpp's AMX kernels crash on some machines: the extra
buffer types are off (`use_extra_bufts=False`).
"""

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
from unittest import mock

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "scripts"))  # Imported by the tests too, from elsewhere.

import hf_dirs  # pylint: disable=wrong-import-position
import check_hf_parity  # pylint: disable=wrong-import-position  (beside this script: its Report)

REFERENCE = os.path.join(ROOT, "tests", "data", "llama_cpp_reference.json")
PROMPTS = ["def add(a, b):\n    return",
           "<|im_start|>user\nWhat is 2024 + 7?<|im_end|>\n<|im_start|>assistant\n",
           "class Point:\n    x: int = 0\n\n  y",
           "naïve café → 数字 🙂 x"]
# Texts whose ids alone are compared: digits, whitespace runs, control tokens spelled out.
TEXTS = ["In 2024, 1234567 + 89 = ?", "  two  spaces\t\ttabs\n\n\n  end ", "x<s>a<pad></s> b <|im_end|>",
         "'s 're I've ALL CAPS", "€ ü 🙂🙂 数字"]
NEW_TOKENS = 12
# llama.cpp's f32 kernels sum in other orders; with f16 weights it also rounds the activations
# to f16 before each product (jaxtrain multiplies them in f32).
LOGIT_TOLERANCE = {"f32": 1e-3, "f16": 0.25}
NEAR_TIE = 0.05  # A top-2 gap under this may flip with f16 rounding.

# The reference model: 'gqa_tied' with a vocabulary exactly the tokenizer's (280 trained,
# two chat tokens added), a seed and weight scale picked so that greedy paths are clear.
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SEED, STD = 3, 0.7
VARIANT = dict(hf_dirs.VARIANTS["gqa_tied"], vocab_size=280 + len(CHAT_TOKENS))
SPM_VOCAB = 320
SPM_TEXT = hf_dirs.TOKENIZER_TEXT + ["<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\nIt is 4.\n",
                                     "year = 2024  # naive cafe\n"] * 20


def add_chat_tokens(directory):
  """Adds CHAT_TOKENS (special, as SmolLM2's tokenizer.json holds them) and CHAT_TEMPLATE to
  an hf_dirs directory's tokenizer; returns the tokenizer's size."""
  from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
  path = os.path.join(directory, "tokenizer.json")
  tok = Tokenizer.from_file(path)
  tok.add_special_tokens(CHAT_TOKENS)
  tok.save(path)
  config_path = os.path.join(directory, "tokenizer_config.json")
  with open(config_path, encoding="utf-8") as f:
    config = json.load(f)
  config["chat_template"] = CHAT_TEMPLATE
  with open(config_path, "w", encoding="utf-8") as f:
    json.dump(config, f)
  return tok.get_vocab_size(with_added_tokens=True)


def reference_model(directory):
  """Writes the reference Hugging Face directory (the same bytes every time) and returns it."""
  with mock.patch.dict(hf_dirs.VARIANTS, {"llama_cpp_reference": VARIANT}):
    hf_dirs.make(directory, "llama_cpp_reference", seed=SEED, std=STD)
  size = add_chat_tokens(directory)
  if size != VARIANT["vocab_size"]:
    raise RuntimeError(f"the reference tokenizer has {size} ids, not {VARIANT['vocab_size']}: tokenizers trained "
                       f"it differently; update VARIANT and rewrite the reference")
  return directory


def spm_model(directory):
  """The reference model with a SentencePiece BPE tokenizer.model (Llama 2's kind of
  vocabulary: llama.cpp's 'llama') instead of the byte-level BPE, SPM_VOCAB ids."""
  from jaxtrain.data import tokenizers  # pylint: disable=import-outside-toplevel
  with mock.patch.dict(hf_dirs.VARIANTS, {"llama_cpp_spm": dict(VARIANT, vocab_size=SPM_VOCAB)}):
    hf_dirs.make(directory, "llama_cpp_spm", seed=SEED, std=STD)
  os.remove(os.path.join(directory, "tokenizer.json"))
  tokenizers.train_sentencepiece(SPM_TEXT, os.path.join(directory, "tokenizer.model"), SPM_VOCAB, model_type="bpe")
  return directory


MODELS = {"bpe": reference_model, "spm": spm_model}
# Each case: the model and the outtype of its export.
CASES = {"f32": ("bpe", "f32"), "f16": ("bpe", "f16"), "spm_f32": ("spm", "f32")}


def padded_vocabulary(work, report):
  """Reported, not checked: an export whose embedding has more rows than the tokenizer has
  ids (hf_dirs' 'gqa_tied': 320 rows, 280 ids). llama.cpp wants a token for every row."""
  import jaxtrain.lm  # pylint: disable=import-outside-toplevel
  directory = hf_dirs.make(os.path.join(work, "padded"), "gqa_tied")
  path = os.path.join(work, "padded.gguf")
  jaxtrain.lm.load(directory).export_gguf(path)
  try:
    LlamaCpp(path).close()
    report.info("an export with 320 embedding rows and 280 token ids", "llama.cpp loads it")
  except ValueError as e:
    report.info("an export with 320 embedding rows and 280 token ids", f"llama.cpp refuses it ({e})")


def tensor_digest(path):
  """sha256 of a GGUF file's tensors: each name, type, shape and bytes, in the file's order."""
  import gguf  # pylint: disable=import-outside-toplevel
  digest = hashlib.sha256()
  for t in gguf.GGUFReader(path).tensors:
    digest.update(f"{t.name}:{t.tensor_type.name}:{[int(n) for n in t.shape]}\n".encode())
    digest.update(np.ascontiguousarray(t.data).tobytes())
  return digest.hexdigest()


def jaxtrain_ids(lm, texts):
  """jaxtrain's ids of `texts` as llama.cpp tokenizes a prompt: special tokens parsed, BOS
  first where the tokenizer puts it."""
  return [([lm.tokenizer.bos_id] if lm.tokenizer.adds_bos else []) + lm.tokenizer.encode(t, special_tokens=True)
          for t in texts]


def jaxtrain_side(lm, prompts, new_tokens):
  """jaxtrain's ids of `prompts` (`jaxtrain_ids`), greedy continuations, the smallest top-2
  gap along each path, and the prompt's last-position logits."""
  ids = jaxtrain_ids(lm, prompts)
  lm.sampler.eos_ids = ()  # llama.cpp's generate goes on past EOS too.
  greedy = lm.sampler.generate(ids, new_tokens)
  gaps, last = [], []
  for prompt, more in zip(ids, greedy):
    logits = lm.logits([prompt + more])[0]
    path = np.sort(logits[len(prompt) - 1:-1], axis=-1)
    gaps.append(float((path[:, -1] - path[:, -2]).min()))
    last.append(logits[len(prompt) - 1])
  return ids, greedy, gaps, last


class LlamaCpp:
  """llama.cpp on one GGUF file, through llama-cpp-python."""

  def __init__(self, path, n_ctx=512):
    import llama_cpp  # pylint: disable=import-outside-toplevel
    # The KV cache in f32 (llama.cpp's default is f16): otherwise f32 weights are not compared alone.
    self.llm = llama_cpp.Llama(path, n_ctx=n_ctx, n_threads=os.cpu_count() or 1, use_extra_bufts=False,
                               verbose=False, seed=0, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)

  def tokenize(self, text):
    """llama.cpp's ids: special tokens parsed, BOS where the file's metadata says (add_bos
    asks for the special tokens; llama.cpp adds BOS only if tokenizer.ggml.add_bos_token)."""
    return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)

  def greedy(self, ids, new_tokens):
    out = []
    for token in self.llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
      out.append(int(token))
      if len(out) == new_tokens:
        break
    return out

  def last_logits(self, ids):
    self.llm.reset()
    self.llm.eval(ids)  # Without logits_all, llama-cpp-python keeps no scores: read the context's last row.
    row = self.llm._ctx.get_logits_ith(-1)  # pylint: disable=protected-access
    return np.ctypeslib.as_array(row, shape=(self.llm.n_vocab(),)).astype(np.float32)

  def detokenize(self, ids):
    return self.llm.detokenize(ids).decode("utf-8", "replace")

  def close(self):
    self.llm.close()


class Report(check_hf_parity.Report):
  def info(self, what, detail):
    print(f"info {what}: {detail}")


def check_tiny(work, report, write):
  import jaxtrain.lm  # pylint: disable=import-outside-toplevel
  reference = {"model": {"base": "gqa_tied", "seed": SEED, "std": STD, "vocab_size": VARIANT["vocab_size"],
                         "spm_vocab_size": SPM_VOCAB}, "prompts": PROMPTS, "texts": TEXTS, "new_tokens": NEW_TOKENS}
  sources = {}
  for case, (kind, outtype) in CASES.items():
    if kind not in sources:
      sources[kind] = jaxtrain.lm.load(MODELS[kind](os.path.join(work, f"model_{kind}")))
    path = os.path.join(work, f"{case}.gguf")
    sources[kind].export_gguf(path, outtype)
    lm = jaxtrain.lm.load(path)
    ids, greedy, gaps, last = jaxtrain_side(lm, PROMPTS, NEW_TOKENS)
    cpp = LlamaCpp(path)
    cpp_ids = [cpp.tokenize(p) for p in PROMPTS]
    cpp_text_ids = [cpp.tokenize(t) for t in TEXTS]
    text_ids = jaxtrain_ids(lm, TEXTS)
    cpp_greedy = [cpp.greedy(i, NEW_TOKENS) for i in cpp_ids]
    cpp_last = [cpp.last_logits(i) for i in cpp_ids]
    cpp.close()
    report.check(f"{case} prompt ids", cpp_ids == ids, f"{sum(map(len, ids))} ids over {len(ids)} prompts"
                 + ("" if cpp_ids == ids else f"; llama.cpp {cpp_ids} jaxtrain {ids}"))
    report.check(f"{case} text ids", cpp_text_ids == text_ids, f"{sum(map(len, text_ids))} ids over {len(TEXTS)} "
                 f"texts" + ("" if cpp_text_ids == text_ids else f"; llama.cpp {cpp_text_ids} jaxtrain {text_ids}"))
    tie = min(gaps) < NEAR_TIE
    report.check(f"{case} greedy continuations", cpp_greedy == greedy or (outtype != "f32" and tie),
                 f"{'equal' if cpp_greedy == greedy else f'llama.cpp {cpp_greedy} jaxtrain {greedy}'}; smallest "
                 f"top-2 gap on jaxtrain's paths {min(gaps):.4f}" + (" (a near-tie)" if tie else ""))
    diff = max(float(np.abs(a - b).max()) for a, b in zip(cpp_last, last))
    scale = max(float(np.abs(b).max()) for b in last)
    report.check(f"{case} last-position logits", diff <= LOGIT_TOLERANCE[outtype],
                 f"max |llama.cpp - jaxtrain| {diff:.2e} (logits up to {scale:.2f})")
    reference[case] = {"tensor_digest": tensor_digest(path), "ids": cpp_ids, "text_ids": cpp_text_ids,
                       "greedy": cpp_greedy,
                       "min_top2_gap": round(min(gaps), 4), "max_logit_diff": float(f"{diff:.3g}"),
                       "greedy_is_clear": not tie}
    if outtype == "f32":
      reference[case]["last_logits"] = [[round(float(x), 4) for x in row] for row in cpp_last]
  padded_vocabulary(work, report)
  if write and not report.failed:
    with open(REFERENCE, "w", encoding="utf-8") as f:
      f.write(compact_json(reference) + "\n")
    print(f"wrote {REFERENCE}")


def check_file(path, prompts, new_tokens, work, report):
  """A GGUF file from elsewhere: jaxtrain's tokenizer of it against llama.cpp's; jaxtrain's
  f32 export of it run by llama.cpp against jaxtrain."""
  import jaxtrain.lm  # pylint: disable=import-outside-toplevel
  lm = jaxtrain.lm.load(path)
  ids, greedy, gaps, last = jaxtrain_side(lm, prompts, new_tokens)
  text_ids = jaxtrain_ids(lm, TEXTS)
  original = LlamaCpp(path)
  cpp_ids, cpp_text_ids = [original.tokenize(p) for p in prompts], [original.tokenize(t) for t in TEXTS]
  for what, theirs, ours in (("prompt", cpp_ids, ids), ("text", cpp_text_ids, text_ids)):
    report.check(f"{what} ids (llama.cpp on the file vs jaxtrain's tokenizer of it)", theirs == ours,
                 f"{sum(map(len, ours))} ids" + ("" if theirs == ours else f"; llama.cpp {theirs} jaxtrain {ours}"))
  quantized = [original.greedy(i, new_tokens) for i in cpp_ids]
  original.close()
  exported = os.path.join(work, "exported_f32.gguf")
  lm.export_gguf(exported, "f32")
  cpp = LlamaCpp(exported)
  again = [cpp.tokenize(t) for t in prompts + TEXTS]
  report.check("ids of llama.cpp on jaxtrain's export vs on the file", again == cpp_ids + cpp_text_ids,
               f"{sum(map(len, again))} ids")
  cpp_greedy = [cpp.greedy(i, new_tokens) for i in ids]
  diff = max(float(np.abs(cpp.last_logits(i) - row).max()) for i, row in zip(ids, last))
  cpp.close()
  for prompt, ours, theirs, gap, q in zip(prompts, greedy, cpp_greedy, gaps, quantized):
    report.check(f"greedy text of {prompt!r} (f32 export)", ours == theirs,
                 f"jaxtrain {lm.tokenizer.decode(ours)!r}" + ("" if ours == theirs else
                                                             f"; llama.cpp {lm.tokenizer.decode(theirs)!r}")
                 + f" (smallest top-2 gap {gap:.4f})")
    report.info("llama.cpp on the original file", f"{lm.tokenizer.decode(q)!r} "
                f"({'the same tokens' if q == ours else 'other tokens'})")
  scale = max(float(np.abs(row).max()) for row in last)
  report.check("last-position logits, f32 export", diff <= 1e-2,
               f"max |llama.cpp - jaxtrain| {diff:.2e} (logits up to {scale:.1f})")


def compact_json(value):
  """JSON with each list of numbers on one line."""
  text = json.dumps(value, indent=1)
  return re.sub(r"\[[-0-9.e,\s]+\]", lambda m: "[" + ", ".join(m.group(0)[1:-1].split()).replace(",,", ",") + "]", text)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  parser.add_argument("--write", action="store_true", help=f"store llama.cpp's outputs in {REFERENCE}")
  parser.add_argument("--gguf", help="compare on this GGUF file instead of the tiny reference model")
  parser.add_argument("--prompt", action="append", help="a prompt for --gguf (repeatable)")
  parser.add_argument("--new_tokens", type=int, default=24, help="greedy tokens per prompt for --gguf")
  args = parser.parse_args()
  report = Report()
  with tempfile.TemporaryDirectory() as work:
    os.environ.setdefault("JAXTRAIN_CACHE", os.path.join(work, "cache"))
    if args.gguf:
      prompts = args.prompt or ["<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
                                "def fibonacci(n):", "In 2024, the"]
      check_file(os.path.expanduser(args.gguf), prompts, args.new_tokens, work, report)
    else:
      check_tiny(work, report, args.write)
  print("all checks passed" if not report.failed else f"{report.failed} check(s) FAILED")
  sys.exit(1 if report.failed else 0)


if __name__ == "__main__":
  main()
