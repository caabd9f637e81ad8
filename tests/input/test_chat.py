"""Tests for chat templates (jaxtrain.data.chat) and chat data: renderings equal to
transformers' (tests/data/chat_templates.json, from scripts/check_chat_templates.py), the
assistant's spans, format 'chat' and prompt/completion pairs through a template, packing's
special tokens and BOS, the config's errors, and a whole run on chat data."""

import datetime
import json
import math
import os

import numpy as np
import pytest

from jaxtrain import train
from jaxtrain.config import Reader, check_all_read
from jaxtrain import data
from jaxtrain.data import chat
from jaxtrain.data import documents
from jaxtrain.data import packing
from jaxtrain.data import tokenizers
from jaxtrain.errors import UserError

import chat_dirs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
with open(os.path.join(ROOT, "tests", "data", "chat_templates.json"), encoding="utf-8") as _f:
  REFERENCE = json.load(_f)
TEMPLATES = REFERENCE["templates"]
CONVERSATIONS = REFERENCE["conversations"]
CHATML = TEMPLATES["smollm2"]["template"]
CHATML_TOKENS, LLAMA3_TOKENS = chat_dirs.CHATML_TOKENS, chat_dirs.LLAMA3_TOKENS
chat_tokenizer = chat_dirs.chat_tokenizer


def chatml_tokenizer(directory):
  return chat_dirs.chatml_tokenizer(directory, CHATML)


@pytest.fixture(scope="module")
def chatml_dir(tmp_path_factory):
  return chatml_tokenizer(tmp_path_factory.mktemp("chatml"))


def write_jsonl(path, records):
  path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
  return str(path)


def open_text(**section):
  cfg = Reader({"input": {"data": section}})
  source = data.open_from_config(cfg.input.data)
  check_all_read(cfg)
  return source


def read_all(source):
  return source.read(np.arange(len(source)))


def one_line(excinfo):
  message = str(excinfo.value)
  assert "\n" not in message and len(message) < 400, message
  return message


# ---------------------------------------------------------------------------------------
# Rendering, against transformers.
# ---------------------------------------------------------------------------------------


def case_id(case):
  extra = "-".join(sorted(case["extra"])) or "plain"
  return f"{case['template']}-{case['conversation']}-{extra}-{'gen' if case['add_generation_prompt'] else 'full'}"


@pytest.mark.parametrize("case", REFERENCE["cases"], ids=case_id)
def test_renderings_equal_transformers(case):
  spec = TEMPLATES[case["template"]]
  render = lambda: chat.render(spec["template"], CONVERSATIONS[case["conversation"]],  # noqa: E731
                               add_generation_prompt=case["add_generation_prompt"], bos_token=spec["bos_token"],
                               eos_token=spec["eos_token"], **case["extra"])
  if "error" in case:  # The template's raise_exception: one line with its message.
    with pytest.raises(UserError) as excinfo:
      render()
    assert one_line(excinfo) == f"the chat template refuses these messages: {case['error']}"
    return
  expected = case["expected"]
  if "today" in case:  # Rendered by strftime_now on the day the reference was written.
    expected = expected.replace(case["today"], datetime.datetime.now().strftime("%d %b %Y"))
  assert render() == expected


def test_the_reference_covers_five_families_and_their_branches():
  cases = REFERENCE["cases"]
  assert set(TEMPLATES) == {"smollm2", "llama3", "qwen2.5", "mistral", "gemma"}
  assert len(cases) >= 60 and {c["template"] for c in cases} == set(TEMPLATES)
  errors = {(c["template"], c["error"]) for c in cases if "error" in c}
  assert ("mistral", "Only user and assistant roles are supported!") in errors
  assert ("mistral", "Conversation roles must alternate user/assistant/user/assistant/...") in errors
  assert ("gemma", "System role not supported") in errors
  qwen = [c for c in cases if c["template"] == "qwen2.5" and "expected" in c]
  assert any("You are Qwen, created by Alibaba Cloud" in c["expected"] for c in qwen)  # Its default system prompt.
  assert any("<tools>" in c["expected"] and "Zürich" in c["expected"] for c in qwen)  # tojson, ensure_ascii=False.
  assert any("You are a helpful AI assistant named SmolLM" in c.get("expected", "") for c in cases)
  assert any("today" in c for c in cases)


def test_render_for_uses_the_tokenizers_template_and_tokens(chatml_dir, tmp_path):
  tok = tokenizers.load(chatml_dir)
  assert tok.chat_template == CHATML and tok.token("bos") == "<|im_start|>"
  messages = CONVERSATIONS["two_turns"]
  assert chat.render_for(tok, messages, add_generation_prompt=True) == chat.render(
      CHATML, messages, add_generation_prompt=True, bos_token="<|im_start|>", eos_token="<|im_end|>")
  bos_echo = chat_tokenizer(tmp_path / "echo", "{{ bos_token }}|{{ eos_token }}|{{ pad_token }}|{{ x }}",
                            LLAMA3_TOKENS, "<|begin_of_text|>", "<|eot_id|>", pad="<|end_of_text|>")
  assert chat.render_for(tokenizers.load(bos_echo), messages, x=3) == "<|begin_of_text|>|<|eot_id|>|<|end_of_text|>|3"
  plain = chat_tokenizer(tmp_path / "plain", None, CHATML_TOKENS, "<|im_start|>", "<|im_end|>")
  with pytest.raises(UserError) as excinfo:
    chat.render_for(tokenizers.load(plain), messages)
  assert one_line(excinfo).startswith(f"model {plain} has no chat template")


def test_unset_special_tokens_are_undefined_not_none():
  # transformers passes only the tokens a tokenizer has: Qwen's missing bos renders as ''.
  assert chat.render("[{{ bos_token }}][{{ tools is none }}]", [{"role": "user", "content": "x"}]) == "[][True]"


BAD_MESSAGES = [
    ("not a list", "messages must be a non-empty list of {'role': ..., 'content': ...} objects, got 'hi'"),
    ([], "messages must be a non-empty list"),
    ([{"role": "user", "content": "a"}, "b"], "message 1 must be an object with 'role' and 'content', got 'b'"),
    ([{"role": "user"}], "message 0 has no 'content' (it has 'role'); each message needs a 'role' and a 'content'"),
    ([{"role": "user", "content": None}], "message 0 has no 'content'"),
    ([{"role": "user", "content": "a"}, {"role": 3, "content": "b"}], "message 1's 'role' must be a string, got int 3"),
    ([{"role": "user", "content": [{"type": "text"}]}], "message 0's 'content' must be a string, got list"),
]


@pytest.mark.parametrize("messages, line", BAD_MESSAGES, ids=[line[:30] for _, line in BAD_MESSAGES])
def test_bad_messages_are_one_line_naming_the_message(messages, line):
  with pytest.raises(UserError) as excinfo:
    chat.render(CHATML, "hi" if messages == "not a list" else messages)
  assert one_line(excinfo).startswith(line)


def test_template_mistakes_are_one_line():
  messages = [{"role": "user", "content": "x"}]
  with pytest.raises(UserError) as excinfo:
    chat.render("{% for m in messages %}{{ m.content }", messages)
  assert one_line(excinfo).startswith("the chat template does not compile: ")
  with pytest.raises(UserError) as excinfo:
    chat.render("{{ messages[3].content.upper() }}", messages)
  assert one_line(excinfo).startswith("the chat template fails on these messages: UndefinedError")
  with pytest.raises(UserError) as excinfo:
    chat.render("{{ raise_exception('two\nlines') }}", messages)
  assert one_line(excinfo) == "the chat template refuses these messages: two lines"
  with pytest.raises(UserError) as excinfo:  # The sandbox: no reaching Python's internals.
    chat.render("{{ messages.__class__.__mro__ }}", messages)
  assert "SecurityError" in one_line(excinfo) or "UndefinedError" in one_line(excinfo)
  with pytest.raises(UserError, match="underscore-prefixed"):
    chat.render("{% set ns = namespace(_x=1) %}", messages)


def test_the_environment_is_transformers():
  messages = [{"role": "user", "content": "x", "reasoning": "because"}]
  template = ("{% set ns = namespace(n=0) %}{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}"
              "{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}|{{ {'a': 'é<'} | tojson }}|{{ [1] | tojson(indent=2) }}|"
              "{% generation %}{{ messages[0].reasoning_content }}{% endgeneration %}|{{ strftime_now('%Y') }}|"
              "{{ dict(a=1).a }}\n  {% if true %}\n    trimmed\n  {% endif %}\n")
  year = str(datetime.datetime.now().year)
  assert chat.render(template, messages) == f'3|{{"a": "é<"}}|[\n  1\n]|because|{year}|1\n    trimmed\n'


# ---------------------------------------------------------------------------------------
# The assistant's spans.
# ---------------------------------------------------------------------------------------

END_OF_TURN = {"smollm2": "<|im_end|>\n", "qwen2.5": "<|im_end|>\n", "llama3": "<|eot_id|>", "mistral": "</s>",
               "gemma": "<end_of_turn>\n"}


@pytest.mark.parametrize("name", sorted(END_OF_TURN))
def test_assistant_segments_are_the_replies_and_their_end_of_turn(name):
  spec = TEMPLATES[name]
  tokens = {"bos_token": spec["bos_token"], "eos_token": spec["eos_token"]}
  for conversation in ("two_turns", "unicode_quotes"):
    messages = CONVERSATIONS[conversation]
    segments = chat.assistant_segments(spec["template"], messages, date_string="26 Jul 2024", **tokens)
    assert "".join(t for t, _ in segments) == chat.render(spec["template"], messages, date_string="26 Jul 2024",
                                                          **tokens)
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    trim = name in ("llama3", "gemma")  # Their templates trim each message.
    assert [t for t, w in segments if w] == [(r.strip() if trim else r) + END_OF_TURN[name] for r in replies]
    assert [w for _, w in segments] == [False, True] * len(replies)


def test_assistant_segments_from_a_tokenizer_and_with_tools(chatml_dir):
  tok = tokenizers.load(chatml_dir)
  segments = chat.assistant_segments(tok, CONVERSATIONS["system_two_turns"])
  assert [t for t, w in segments if w] == ["Bonjour !<|im_end|>\n", "De rien.<|im_end|>\n"]
  qwen = TEMPLATES["qwen2.5"]["template"]
  segments = chat.assistant_segments(qwen, CONVERSATIONS["tools"], tools=[{"name": "f"}], eos_token="<|im_end|>")
  assert [t for t, w in segments if w] == [
      '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}\n</tool_call><|im_end|>\n',
      "21 °C and clear.<|im_end|>\n"]
  assert segments[-1][1]  # Nothing after the last reply.
  segments = chat.assistant_segments(CHATML, CONVERSATIONS["system_user"])  # No reply: nothing weighted.
  assert segments == [(chat.render(CHATML, CONVERSATIONS["system_user"]), False)]


def test_a_template_that_rewrites_earlier_turns_is_refused():
  # As Qwen3's drops the reasoning of earlier turns: an earlier reply renders otherwise.
  template = ("{% for m in messages %}{% if m.role == 'assistant' and not loop.last %}[earlier]"
              "{% else %}<{{ m.role }}>{{ m.content }}{% endif %}{% endfor %}"
              "{% if add_generation_prompt %}<assistant>{% endif %}")
  with pytest.raises(UserError) as excinfo:
    chat.assistant_segments(template, CONVERSATIONS["two_turns"])
  assert one_line(excinfo).startswith("cannot tell message 1 (assistant) apart for the loss: ")
  # SmolLM2's default system prompt goes before the first message: an assistant first breaks it.
  with pytest.raises(UserError, match="cannot tell message 0"):
    chat.assistant_segments(CHATML, [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Yo"}])


# ---------------------------------------------------------------------------------------
# Chat data: rendered, encoded with special tokens, weighted on the assistant's spans.
# ---------------------------------------------------------------------------------------


def replies(messages):
  return [m["content"] for m in messages if m["role"] == "assistant"]


def test_chat_data_weights_exactly_the_assistant_tokens(chatml_dir, tmp_path):
  names = ("two_turns", "system_two_turns", "unicode_quotes", "system_user")
  files = write_jsonl(tmp_path / "chats.jsonl", [{"messages": CONVERSATIONS[n]} for n in names])
  src = open_text(format="chat", files=files, split="train", validation_fraction=0.0, seq_len=16,
                  tokenizer=chatml_dir, data_dir=str(tmp_path / "cache"))
  tok = src.tokenizer
  rows = read_all(src)
  weighted = rows["targets"][rows["weights"] > 0].tolist()
  spans = [r + "<|im_end|>\n" for n in names for r in replies(CONVERSATIONS[n])]
  assert weighted == [i for span in spans for i in tok.encode(span, special_tokens=True)]
  assert tok.decode(weighted) == "".join(r + "\n" for n in names for r in replies(CONVERSATIONS[n]))
  assert weighted.count(tok.eos_id) == len(spans)  # Each reply's '<|im_end|>', never packing's eos.
  assert src.num_bytes == rows["bytes"].sum() == sum(len(s.encode()) for s in spans)
  # The stream is transformers' apply_chat_template(tokenize=True), then packing's eos;
  # the rendering starts with bos ('<|im_start|>'), so packing adds none.
  stream = src.tokens.tolist()
  first = REFERENCE["chatml_ids"]["two_turns"]
  assert stream[:len(first) + 1] == first + [tok.eos_id] and stream[0] == tok.bos_id != stream[1]
  unweighted = tok.decode(rows["targets"][(rows["weights"] == 0) & (rows["segment_ids"] > 0)].tolist())
  assert "You are a helpful AI assistant named SmolLM" in unweighted and "Name a prime." in unweighted
  assert not any(r in unweighted for n in names for r in replies(CONVERSATIONS[n]) if len(r) > 3)


def test_packed_ids_equal_transformers_for_unicode_and_quotes(chatml_dir):
  tok = tokenizers.load(chatml_dir)
  messages = CONVERSATIONS["unicode_quotes"]
  document = documents.Rendered(chat.assistant_segments(tok, messages), "")
  stream, _ = packing.tokenize(tok, [document])
  assert stream["tokens"].tolist() == REFERENCE["chatml_ids"]["unicode_quotes"] + [tok.eos_id]
  assert tok.encode(chat.render_for(tok, messages), special_tokens=True) == REFERENCE["chatml_ids"]["unicode_quotes"]


def test_special_token_text_in_plain_data_stays_text(chatml_dir):
  tok = tokenizers.load(chatml_dir)
  stream, _ = packing.tokenize(tok, [[("<|im_start|>user\nhi<|im_end|>", True)]])
  tokens = stream["tokens"].tolist()
  assert tokens[0] == tok.bos_id and tokens[-1] == tok.eos_id and tok.bos_id not in tokens[1:-1]


def test_encode_special_matches_the_tokenizer_and_counts_every_byte(chatml_dir):
  tok = tokenizers.load(chatml_dir)
  texts = ["<|im_start|>user\nnaïve 😀<|im_end|>\n", "", "plain", "<|im_end|><|im_end|>x<|endoftext|>"]
  for text, (ids, counts) in zip(texts, packing.encode_special(texts, tok)):
    assert ids.tolist() == tok.encode(text, special_tokens=True)
    assert counts.sum() == len(text.encode()) and counts.min(initial=0) >= 0
  ids, counts = packing.encode_special(["<|im_end|>ab"], tok)[0]
  assert counts.tolist()[0] == len("<|im_end|>")  # A special token's bytes: its spelling's.

  class Prefixing:  # A tokenizer whose text pieces encode otherwise alone: the ids stand.
    def __getattr__(self, name):
      return getattr(tok, name)

    def encode_with_bytes(self, texts):
      return [(np.append(0, i), np.append(0, c)) for i, c in tok.encode_with_bytes(texts)]

  ids, counts = packing.encode_special(["<|im_start|>ab"], Prefixing())[0]
  assert ids.tolist() == tok.encode("<|im_start|>ab", special_tokens=True) and counts.tolist()[-1] == 14


def test_a_template_that_writes_bos_and_eos_gets_no_second_ones(tmp_path):
  llama = tokenizers.load(chat_tokenizer(tmp_path / "llama", TEMPLATES["llama3"]["template"], LLAMA3_TOKENS,
                                         "<|begin_of_text|>", "<|eot_id|>", pad="<|end_of_text|>"))
  mistral = tokenizers.load(chat_tokenizer(tmp_path / "mistral", TEMPLATES["mistral"]["template"],
                                           ("<unk>", "<s>", "</s>"), "<s>", "</s>"))
  messages = CONVERSATIONS["two_turns"]
  for tok in (llama, mistral):
    document = documents.Rendered(chat.assistant_segments(tok, messages), "")
    stream, _ = packing.tokenize(tok, [document, document])
    tokens, flags = stream["tokens"].tolist(), stream["flags"].tolist()
    half = len(tokens) // 2
    # The rendering is encoded whole, as apply_chat_template(tokenize=True) encodes it.
    assert tokens[:half] == tokens[half:] == tok.encode("".join(t for t, _ in document), special_tokens=True)
    assert tokens.count(tok.bos_id) == 2 and tokens[0] == tokens[half] == tok.bos_id  # One bos per document.
    assert tokens[half - 1] == tok.eos_id != tokens[half - 2]  # The template's own eos ends it.
    assert flags[0] & packing.START and flags[half] & packing.START and flags[half - 1] & packing.WEIGHTED
  # A template that writes no bos (ChatML with bos '<|endoftext|>'): packing's bos goes first.
  other = tokenizers.load(chat_tokenizer(tmp_path / "other", CHATML, CHATML_TOKENS, "<|endoftext|>", "<|im_end|>"))
  stream, _ = packing.tokenize(other, [documents.Rendered(chat.assistant_segments(other, messages), "")])
  assert stream["tokens"][:2].tolist() == [other.bos_id, other.encode("<|im_start|>", special_tokens=True)[0]]


def test_a_sentencepiece_conversation_is_encoded_whole_and_weighted_on_the_replies(tmp_path):
  """Encoding each reply alone would start it with a '▁' piece ('▁hello'), where the whole
  rendering, which the model reads when prompted, has 'hello' after '[/INST]'."""
  directory = tmp_path / "spm"
  directory.mkdir()
  texts = [f"[INST] hi there number {i} [/INST]hello world, and more words {i}" for i in range(200)]
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  # As Llama 2's and Mistral's tokenizer.model: BPE, a dummy prefix ('▁' before a text), unk/bos/eos 0/1/2.
  spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_prefix=str(directory / "tokenizer"),
                                 vocab_size=300, model_type="bpe", byte_fallback=True, unk_id=0, bos_id=1, eos_id=2,
                                 pad_id=-1, minloglevel=2, num_threads=1)
  with open(directory / "tokenizer_config.json", "w", encoding="utf-8") as f:
    json.dump({"chat_template": TEMPLATES["mistral"]["template"]}, f)
  tok = tokenizers.load(str(directory))
  messages = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello world"},
              {"role": "user", "content": "and more"}, {"role": "assistant", "content": "words"}]
  document = documents.Rendered(chat.assistant_segments(tok, messages), "")
  whole = tok.encode("".join(t for t, _ in document), special_tokens=True)
  apart = [i for t, _ in document for i in tok.encode(t, special_tokens=True)]
  assert whole != apart  # The case this test is for.
  stream, _ = packing.tokenize(tok, [document])
  tokens, flags = stream["tokens"].tolist(), stream["flags"].tolist()
  assert tokens[1:1 + len(whole)] == whole or tokens[:len(whole)] == whole
  weighted = [t for t, f in zip(tokens, flags) if f & packing.WEIGHTED]
  assert tok.decode(weighted) == "hello worldwords"  # The replies (their '</s>' is a control token).
  replies = sum(len(t.encode()) for t, w in document if w)
  assert stream["bytes"].sum() == replies


def test_prompt_completion_renders_through_the_template_unless_none(chatml_dir, tmp_path):
  records = [{"input": f"Question {i}: 2+{i}?", "output": f"It is {2 + i}.", "id": i} for i in range(12)]
  files = write_jsonl(tmp_path / "pc.jsonl", records)
  section = dict(format="prompt_completion", files=files, prompt_field="input", completion_field="output",
                 split="train", validation_fraction=0.0, seq_len=16, tokenizer=chatml_dir,
                 data_dir=str(tmp_path / "cache"))
  src = open_text(**section)
  tok = src.tokenizer
  rows = read_all(src)
  assert rows["targets"][rows["weights"] > 0].tolist() == [
      i for r in records for i in tok.encode(r["output"] + "<|im_end|>\n", special_tokens=True)]
  assert tok.decode(src.tokens[:80].tolist()).startswith(
      "system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face\nuser\nQuestion 0: 2+0?\n")
  # 'none', and a tokenizer without a template: the plain pairs, as before templates.
  plain = open_text(**dict(section, chat_template="none"))
  plain_rows = read_all(plain)
  assert plain_rows["targets"][plain_rows["weights"] > 0].tolist() == [
      i for r in records for i in tok.encode(r["output"]) + [tok.eos_id]]
  no_template = chat_tokenizer(tmp_path / "plain", None, CHATML_TOKENS, "<|im_start|>", "<|im_end|>")
  expected, _ = packing.tokenize(tok, ([(r["input"], False), (r["output"], True)] for r in records))
  got = open_text(**dict(section, tokenizer=no_template, data_dir=str(tmp_path / "cache2")))
  for key in ("tokens", "bytes", "flags"):
    np.testing.assert_array_equal(getattr(got, {"bytes": "token_bytes"}.get(key, key)), expected[key])
  np.testing.assert_array_equal(plain.tokens, expected["tokens"])
  # The split is the pair's own: the same documents with and without the template.
  halves = {mode: [open_text(**dict(section, validation_fraction=0.5, split=split, chat_template=mode)).num_documents
                   for split in ("train", "validation")] for mode in ("auto", "none")}
  assert halves["auto"] == halves["none"] and 0 < halves["auto"][1] < len(records)


def test_chat_data_mistakes_are_one_line(chatml_dir, tmp_path):
  good = write_jsonl(tmp_path / "good.jsonl", [{"messages": CONVERSATIONS["two_turns"]}])
  no_template = chat_tokenizer(tmp_path / "plain", None, CHATML_TOKENS, "<|im_start|>", "<|im_end|>")
  mistral = chat_tokenizer(tmp_path / "mistral", TEMPLATES["mistral"]["template"], ("<unk>", "<s>", "</s>"), "<s>",
                           "</s>")
  bad_field = write_jsonl(tmp_path / "field.jsonl", [{"messages": CONVERSATIONS["user"]}, {"chat": []}])
  bad_message = write_jsonl(tmp_path / "message.jsonl", [{"messages": [{"role": "user", "content": "a"},
                                                                       {"role": "assistant"}]}])
  cases = [
      (dict(tokenizer=dict(kind="bpe", vocab_size=300)),
       "config key 'input.data.format' is 'chat', rendered with the model's chat template, but no "
       "'input.data.tokenizer' path is set and a tokenizer trained here has no template"),
      (dict(tokenizer=no_template), f"config key 'input.data.format' is 'chat', rendered with the model's chat "
                                    f"template, but tokenizer {no_template}/tokenizer.json has none"),
      (dict(chat_template="jinja"), "config key 'input.data.chat_template' is 'jinja'; it is 'auto'"),
      (dict(chat_template="none"), "config key 'input.data.chat_template' is 'none', but format 'chat' is rendered"),
      (dict(files=bad_field), f"{bad_field}:2: no field 'messages' in this JSON line; it has chat (the data "
                              f"section's 'messages_field' names the field to read)"),
      (dict(files=bad_field, messages_field="chat"), f"{bad_field}:1: no field 'chat'"),
      (dict(files=bad_message), f"{bad_message}:1: message 1 has no 'content' (it has 'role')"),
      (dict(files=write_jsonl(tmp_path / "sys.jsonl", [{"messages": CONVERSATIONS["system_two_turns"]}]),
            tokenizer=mistral),
       f"{tmp_path / 'sys.jsonl'}:1: the chat template refuses these messages: Conversation roles must alternate"),
      (dict(format="jsonl", field="text", chat_template="auto",
            files=write_jsonl(tmp_path / "t.jsonl", [{"text": "x"}])),
       "unknown config key 'input.data.chat_template'"),
  ]
  for changes, line in cases:
    section = dict(dict(format="chat", files=good, split="train", validation_fraction=0.0, seq_len=16,
                        tokenizer=chatml_dir, data_dir=str(tmp_path / "cache")), **changes)
    with pytest.raises(UserError) as excinfo:
      open_text(**section)
    assert one_line(excinfo).startswith(line), (one_line(excinfo), line)
  with pytest.raises(UserError, match="format 'chat' is rendered with a model's chat template"):
    list(documents.read("chat", [good]))


def test_a_run_trains_on_chat_data_end_to_end(tfds_dir, chatml_dir, tmp_path):
  from conftest import tiny_lm  # pylint: disable=import-outside-toplevel
  chats = []
  for i in range(60):
    turns = [{"role": "system", "content": "You add numbers."}] if i % 3 == 0 else []
    for j in range(1 + i % 2):
      turns += [{"role": "user", "content": f"What is {i} plus {j}?"},
                {"role": "assistant", "content": f"{i} plus {j} is {i + j}."}]
    chats.append({"conversation": turns})
  config = tiny_lm(str(tmp_path))
  config.input.data = dict(format="chat", files=write_jsonl(tmp_path / "chats.jsonl", chats),
                           messages_field="conversation", split="train", validation_fraction=0.2, seq_len=32,
                           tokenizer=chatml_dir, data_dir=str(tmp_path / "cache"))
  config.model.vocab_size = tokenizers.load(chatml_dir).vocab_size
  config.total_steps, config.log_every_steps = 8, 4
  config.evals.val.every_steps = 4
  config.checkpoint = dict(keep=1, every_steps=8)
  workdir = str(tmp_path / "run")
  train.run(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  last = {k: v for row in rows for k, v in row.items()}
  assert math.isfinite(last["train/loss"]) and math.isfinite(last["val/loss"])
  held_out = data.open_from_config(Reader({"split": "validation"}), like=data.open_from_config(
      Reader(config).input.data))
  weights = read_all(held_out)["weights"]
  assert last["val/num_tokens"] == int(weights.sum()) and 0 < weights.mean() < 0.5  # Replies alone.
  kept = tokenizers.load(os.path.join(workdir, "tokenizer.json"))  # With its tokenizer_config.json: the template.
  assert kept.chat_template == CHATML and kept.fingerprint == tokenizers.load(chatml_dir).fingerprint
