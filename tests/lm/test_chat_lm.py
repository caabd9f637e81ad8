"""`LM.chat` and `python -m jaxtrain.generate --chat`: a conversation rendered with the
model's chat template and answered, the template kept through every export, and a fresh
run started from a GGUF file (`init_from.gguf`)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import chat_dirs
import hf_dirs
from conftest import ROOT, tiny_lm
from jaxtrain.data import chat
from jaxtrain.errors import UserError
from jaxtrain.lm import hf as hf_lib
from jaxtrain.lm import language_model as lm_lib
from jaxtrain.training import build as build_lib

# ChatML with a default system prompt of its own, as SmolLM2's template has.
TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
            "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
            "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
USER = [{"role": "user", "content": "Say hello."}]
SYSTEM = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hello there"}]
NEW = 10


@pytest.fixture(scope="module")
def gguf_cache(tmp_path_factory):
  old = os.environ.get("JAXTRAIN_CACHE")
  os.environ["JAXTRAIN_CACHE"] = str(tmp_path_factory.mktemp("cache"))
  yield
  if old is None:
    del os.environ["JAXTRAIN_CACHE"]
  else:
    os.environ["JAXTRAIN_CACHE"] = old


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
  """hf_dirs' 'gqa_tied' Llama (std 0.7: no near-ties) with a ChatML tokenizer and template."""
  directory = hf_dirs.make(str(tmp_path_factory.mktemp("chat") / "hf"), "gqa_tied", seed=3, std=0.7)
  chat_dirs.chat_tokenizer(directory, TEMPLATE, chat_dirs.CHATML_TOKENS, bos=None, eos="<|im_end|>")
  return directory


@pytest.fixture(scope="module")
def lm(chat_dir):
  return lm_lib.load(chat_dir)


def greedy_by_logits(lm, ids, new_tokens):
  """Greedy decoding from full logits, one token at a time: no KV cache, no sampler."""
  ids, out = list(ids), []
  for _ in range(new_tokens):
    token = int(np.argmax(lm.logits([ids])[0, -1]))
    if token == lm.tokenizer.eos_id:
      break
    ids.append(token)
    out.append(token)
  return lm.tokenizer.decode(out)


def test_chat_answers_the_rendered_conversation_with_its_special_tokens_and_no_extra_bos(lm):
  text = chat.render_for(lm.tokenizer, USER, add_generation_prompt=True)
  assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nSay hello.<|im_end|>\n"
                  "<|im_start|>assistant\n")
  ids = lm.tokenizer.encode(text, special_tokens=True)
  start = lm.tokenizer.encode("<|im_start|>", special_tokens=True)
  assert len(start) == 1 and ids[0] == start[0] and ids.count(start[0]) == 3  # Tokens, not text; no BOS before.
  reply = lm.chat(USER, max_new_tokens=NEW)
  assert reply == greedy_by_logits(lm, ids, NEW) and reply


def test_a_list_of_conversations_gets_a_list_of_replies_in_order(lm):
  replies = lm.chat([USER, SYSTEM], max_new_tokens=NEW)
  assert replies == [lm.chat(USER, max_new_tokens=NEW), lm.chat(SYSTEM, max_new_tokens=NEW)]
  assert replies[1] == greedy_by_logits(
      lm, lm.tokenizer.encode(chat.render_for(lm.tokenizer, SYSTEM, add_generation_prompt=True), special_tokens=True),
      NEW)


def test_a_model_without_a_template_or_a_bad_message_is_one_line(lm, tmp_path):
  plain = lm_lib.load(hf_dirs.make(str(tmp_path / "plain"), "gqa_tied"))
  with pytest.raises(UserError, match=r"has no chat template") as e:
    plain.chat(USER)
  assert "\n" not in str(e.value)
  with pytest.raises(UserError, match=r"message 0 .*role"):
    lm.chat([{"content": "no role"}])


def generate(*args):
  return subprocess.run([sys.executable, "-m", "jaxtrain.generate", *args], capture_output=True, text=True,
                        timeout=300, cwd=ROOT)


def as_read(text):
  return text.replace("\r\n", "\n").replace("\r", "\n")  # What text-mode pipes make of it.


def test_generate_chat_prints_each_reply_after_its_prompt(chat_dir, lm):
  done = generate(f"--model={chat_dir}", "--chat", "--prompt=Say hello.", f"--max_new_tokens={NEW}")
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout == as_read(f"--- 1 ---\nSay hello.\n--- reply ---\n{lm.chat(USER, max_new_tokens=NEW)}\n")
  done = generate(f"--model={chat_dir}", "--chat", "--system=Be terse.", "--prompt=Hello there",
                  f"--max_new_tokens={NEW}")
  assert done.returncode == 0
  assert done.stdout == as_read(f"--- 1 ---\nHello there\n--- reply ---\n{lm.chat(SYSTEM, max_new_tokens=NEW)}\n")
  done = generate(f"--model={chat_dir}", "--system=Be terse.", "--prompt=Hello")
  assert done.returncode == 2 and done.stderr.strip().splitlines() == [
      "error: --system is for --chat: add --chat, or put the text in the prompt"]


def test_the_template_travels_through_hugging_face_and_gguf_exports(chat_dir, lm, tmp_path, gguf_cache):
  del gguf_cache
  lm.export_hf(str(tmp_path / "hf"))
  with open(tmp_path / "hf" / "tokenizer_config.json", encoding="utf-8") as f:
    assert json.load(f)["chat_template"] == TEMPLATE
  lm.export_gguf(str(tmp_path / "model.gguf"))
  for path in (str(tmp_path / "hf"), str(tmp_path / "model.gguf")):
    again = lm_lib.load(path)
    assert again.tokenizer.chat_template == TEMPLATE
    assert again.chat([USER, SYSTEM], max_new_tokens=NEW) == lm.chat([USER, SYSTEM], max_new_tokens=NEW), path


@pytest.fixture(scope="module")
def gguf_file(lm, tmp_path_factory, gguf_cache):
  del gguf_cache
  path = str(tmp_path_factory.mktemp("gguf") / "chat.gguf")
  lm.export_gguf(path)
  return path


def test_init_from_gguf_starts_from_the_files_weights_and_model_takes_its_tokenizer(
    chat_dir, gguf_file, corpus, tmp_path):
  config = tiny_lm(corpus)
  config.input.data.tokenizer = None
  config.model = dict(dtype="float32")
  config.init_from = dict(gguf=gguf_file, model=True)
  exp = build_lib.build(config)
  state = exp.init_from.apply(exp.strategy.init(exp.create, exp.abstract_state))
  expected = lm_lib.load(chat_dir).variables["params"]
  for (path, got), (_, value) in zip(jax.tree_util.tree_leaves_with_path(state.params),
                                     jax.tree_util.tree_leaves_with_path(expected)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(value), err_msg=jax.tree_util.keystr(path))
  assert exp.init_from.missing == [] and exp.init_from.unused == []
  assert exp.data.source.tokenizer.chat_template == TEMPLATE  # The GGUF's tokenizer, converted, with its template.
  _, kwargs, _ = hf_lib.read_config(chat_dir)
  assert {k: exp.model.module.__getattribute__(k) for k in ("dim", "num_layers", "num_heads")} == {
      k: kwargs[k] for k in ("dim", "num_layers", "num_heads")}


def test_init_from_takes_one_source(gguf_file, corpus, tmp_path):
  config = tiny_lm(corpus)
  config.init_from = dict(gguf=gguf_file, hf_dir=str(tmp_path))
  with pytest.raises(UserError, match=r"needs one of workdir= .*, hf_dir= .* or gguf= \(a GGUF file\), not several"):
    build_lib.build(config)
  config.init_from = dict(gguf=str(tmp_path / "missing.gguf"))
  with pytest.raises(UserError, match=r"init_from.gguf=.*missing.gguf is not a file; give a .gguf file"):
    build_lib.build(config)
