"""Small Hugging Face tokenizer directories with chat templates, built without transformers or
a download: a byte-level BPE tokenizer.json whose vocabulary is fixed by construction (the same
bytes in any `tokenizers` version), so that scripts/check_chat_templates.py (with
transformers) and tests/input/test_chat.py (without) see the same tokenizer.
"""

import json
import os

CHATML_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
LLAMA3_TOKENS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
# A few byte-level merges, so that tokens span several characters (and could straddle segments).
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("e", "r"), ("o", "n"), ("a", "n"), ("r", "e"),
          ("Ġ", "a"), ("Ġ", "s"), ("Ġ", "h"), ("Ġ", "H"), ("e", "l"), ("l", "o"), ("el", "lo"), ("u", "s"),
          ("e", "d"), ("a", "s"), ("as", "s"), ("i", "s"), ("s", "t"), ("is", "t"), ("an", "t"), ("ass", "ist"),
          ("assist", "ant"), ("s", "y"), ("sy", "st"), ("e", "m"), ("syst", "em"), ("Ċ", "Ċ")]


def chat_tokenizer(directory, template, specials, bos, eos, pad=None):
  """A byte-level BPE tokenizer.json (specials first, the 256 bytes, then MERGES: the same
  bytes in any `tokenizers` version) and a tokenizer_config.json with the chat template."""
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers  # pylint: disable=import-outside-toplevel
  vocab = {token: i for i, token in enumerate(specials)}
  for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
    vocab[char] = len(vocab)
  for a, b in MERGES:
    vocab.setdefault(a + b, len(vocab))
  tok = Tokenizer(models.BPE(vocab=vocab, merges=MERGES))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
  os.makedirs(directory, exist_ok=True)
  tok.save(os.path.join(directory, "tokenizer.json"))
  config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos, "pad_token": pad or eos}
  if template is not None:
    config["chat_template"] = template
  with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, ensure_ascii=False)
  return str(directory)


def chatml_tokenizer(directory, template):
  """SmolLM2-Instruct's special tokens (bos '<|im_start|>', eos and pad '<|im_end|>') and template."""
  return chat_tokenizer(directory, template, CHATML_TOKENS, "<|im_start|>", "<|im_end|>")


