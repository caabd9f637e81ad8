"""The tokenizer wrapper's two encodings of text that spells a special token ('<|im_start|>',
'<s>'): as text for training data (a mailbox must not inject control tokens), as the
token's id for prompts (what transformers does); and whether it puts BOS first, as the
tokenizer file (or an explicit add_bos_token in tokenizer_config.json) says.

The tokenizers are built here, without a download: WordLevel ones whose ids can be checked
by hand, a byte-level BPE with chat tokens added as SmolLM2's and Llama 3's are, and a
small SentencePiece model. The helpers are shared with test_lm.py and test_sampling.py."""

import json
import os

from jaxtrain.data import tokenizers

# A WordLevel vocabulary: a chat marker spelled as text is '<|', 'im_start', '|>'.
WORDS = ["<pad>", "<s>", "</s>", "<unk>", "<|", "|>", "im_start", "im_end", "user", "assistant", "hi", "there"]
IM_START, IM_END = 12, 13  # The added special tokens' ids.
CHAT = "<|im_start|>user hi<|im_end|>"
CHAT_AS_TEXT = [4, 6, 5, 8, 10, 4, 7, 5]
CHAT_AS_TOKENS = [IM_START, 8, 10, IM_END]
SPECIAL = ["<|im_start|>", "<|im_end|>", "<|eot_id|>"]
BPE_TEXT = ["<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n"
            "<|im_start|>assistant\nIt is 4.<|im_end|>\n", "def add(a, b):\n    return a + b\n"] * 20
BPE_CHAT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 3 + 3?<|im_end|>\n"
            "<|im_start|>assistant\n")


def write_config(directory, config):
  if config is not None:
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
      json.dump(config, f)


def word_level(directory, *, bos_first=False, config=None):
  """A directory with a WordLevel tokenizer.json (and `config` as tokenizer_config.json):
  '<|im_start|>', '<|im_end|>' added as special tokens; BOS first (a TemplateProcessing, as
  Llama's tokenizer.json) with `bos_first`, else no post-processor (as SmolLM2's)."""
  from tokenizers import Tokenizer, models, pre_tokenizers, processors  # pylint: disable=import-outside-toplevel
  os.makedirs(directory, exist_ok=True)
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens(WORDS[:4] + SPECIAL[:2])
  if bos_first:
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
  tok.save(os.path.join(directory, "tokenizer.json"))
  write_config(directory, config)
  return str(directory)


def chat_bpe(directory, *, bos_first=False, config=None):
  """A directory with a byte-level BPE tokenizer.json (jaxtrain's train_bpe) with the chat
  tokens added as special tokens, as SmolLM2's and Llama 3's tokenizer.json hold them."""
  from tokenizers import Tokenizer, processors  # pylint: disable=import-outside-toplevel
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, "tokenizer.json")
  tokenizers.train_bpe(BPE_TEXT, path, vocab_size=300)
  tok = Tokenizer.from_file(path)
  tok.add_special_tokens(SPECIAL)
  if bos_first:
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
  tok.save(path)
  write_config(directory, config)
  return str(directory)


def sentencepiece(directory, *, config=None):
  """A directory with a small SentencePiece tokenizer.model (<pad> 0, <s> 1, </s> 2, <unk> 3)."""
  os.makedirs(directory, exist_ok=True)
  tokenizers.train_sentencepiece(BPE_TEXT, os.path.join(directory, "tokenizer.model"), 320, model_type="bpe")
  write_config(directory, config)
  return str(directory)


def transformers_ids(directory, text):
  """What transformers' tokenizer(text) gives for a tokenizer.json: the library's own
  encoding, special tokens in the text parsed, the post-processor's BOS (if any) added."""
  from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
  return Tokenizer.from_file(os.path.join(directory, "tokenizer.json")).encode(text).ids


def test_special_token_text_is_text_in_data_and_the_token_in_prompts(tmp_path):
  tok = tokenizers.load(word_level(tmp_path / "words"))
  assert tok.encode(CHAT) == CHAT_AS_TEXT  # Training data: as the text it is.
  assert tok.encode_with_bytes([CHAT])[0][0].tolist() == CHAT_AS_TEXT
  assert tok.encode(CHAT, special_tokens=True) == CHAT_AS_TOKENS  # A prompt: as transformers encodes it.

  directory = chat_bpe(tmp_path / "bpe")
  tok = tokenizers.load(directory)
  prompt = tok.encode(BPE_CHAT, special_tokens=True)
  assert prompt == transformers_ids(directory, BPE_CHAT)
  assert prompt.count(tok.encode("<|im_start|>", special_tokens=True)[0]) == 3
  data = tok.encode(BPE_CHAT)
  assert len(data) > len(prompt) + 3 * 2 and tok.decode(data) == BPE_CHAT  # Lossless: no control token in data.
  assert tok.encode_with_bytes([BPE_CHAT])[0][0].tolist() == data


def test_sentencepiece_parses_its_control_tokens_in_prompts_only(tmp_path):
  tok = tokenizers.load(sentencepiece(tmp_path / "spm"))
  text = "<s>def add(a, b):</s><unk><pad>"
  body = tok.encode("def add(a, b):")
  assert tok.encode(text, special_tokens=True) == [1] + body + [2, 3, 0]
  literal = tok.encode(text)
  assert not {0, 1, 2} & set(literal) and tok.decode(literal) == text
  assert tok.encode("a<s", special_tokens=True) == tok.encode("a<s")  # No whole token: text.


def test_adds_bos_follows_the_tokenizer_file_and_an_explicit_config(tmp_path):
  template = lambda d, **kw: word_level(d, bos_first=True, **kw)  # noqa: E731  (Llama's tokenizer.json)
  cases = {"json": (word_level, None, False),  # No post-processor (SmolLM2's): no BOS.
           "json_template": (template, None, True),
           "json_template_config_false": (template, {"add_bos_token": False, "bos_token": "<s>"}, False),
           "json_config_true": (word_level, {"add_bos_token": True, "bos_token": "<s>"}, True),
           "spm": (sentencepiece, None, True),  # Llama 2's tokenizer.model, as transformers' LlamaTokenizer.
           "spm_config_false": (sentencepiece, {"add_bos_token": False}, False)}
  got = {}
  for name, (make, config, _) in cases.items():
    tok = tokenizers.load(make(str(tmp_path / name), config=config))
    assert tok.bos_id == 1
    got[name] = tok.adds_bos
  assert got == {name: adds_bos for name, (_, _, adds_bos) in cases.items()}
