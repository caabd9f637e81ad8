"""Command line: completions from a language model.

    python -m jaxtrain.generate --model=runs/code_lm --prompt='def '
    python -m jaxtrain.generate --model=path/to/hf_llama_dir --prompts_file=prompts.txt \\
        --max_new_tokens=128 --temperature=0.8 --top_p=0.95 --seed=1 --stop='\\n\\n'
    python -m jaxtrain.generate --model=SmolLM2-135M-Instruct.Q4_1.gguf --chat \\
        --prompt='Write my manager an email about the Q3 budget.' [--system='You are terse.']

    python -m jaxtrain.generate --model=runs/email --reply_to=email.eml [--reply_to=other.eml]
    python -m jaxtrain.generate --model=runs/email --reply_to=mail.mbox --message_id='<q7@example.com>'

--model is a jaxtrain work directory (newest checkpoint, or --step), a Hugging Face model
directory or a GGUF file. --chat makes each prompt a user message of its own conversation
(after a --system message, if given), rendered with the model's chat template; the reply
is printed after the prompt. --prompt may be given several times. --prompts_file holds one prompt per
line ('\\n' and '\\t' in a line stand for a newline and a tab), or, for a .jsonl file, one
{"prompt": ...} object per line. Each completion is printed after its prompt, under a
'--- N ---' line; --output also writes {"prompt", "completion"} rows to a JSONL file.
--reply_to drafts a reply to an email (an .eml file, or with --message_id a message of an
mbox; repeatable) from the prompt experiments/email_assistant.py trains on (LM.reply,
data/mail.py): written as the person the email was sent to (its first To address).
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging

from jaxtrain.checkpoints import checkpointer as checkpoint
from jaxtrain import errors
from jaxtrain.data import mail
from jaxtrain.errors import UserError, exit_with
from jaxtrain.lm import language_model as lm_lib
from jaxtrain.rundir import storage

_MODEL = flags.DEFINE_string("model", None, "A jaxtrain work directory, a Hugging Face model directory or a .gguf file.")
_STEP = flags.DEFINE_integer("step", None, "The checkpoint of a work directory (default: the newest).")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "A prompt; repeat the flag for several.")
_PROMPTS_FILE = flags.DEFINE_string("prompts_file", None, "Prompts, one per line, or a .jsonl with 'prompt'.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 128, "At most this many new tokens per prompt.", lower_bound=1)
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0: greedy; higher: more random.", lower_bound=0.0)
_TOP_K = flags.DEFINE_integer("top_k", None, "Sample among the k most likely tokens only.", lower_bound=1)
_TOP_P = flags.DEFINE_float("top_p", None, "Sample among the most likely tokens holding this much probability.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed of the sampling.")
_STOP = flags.DEFINE_multi_string("stop", [], "End a completion before this string ('\\n' escapes work).")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Computation dtype (default: the model's).")
_OUTPUT = flags.DEFINE_string("output", None, "Also write {'prompt', 'completion'} rows to this JSONL file.")
_CHAT = flags.DEFINE_boolean("chat", False, "Each prompt is a user message, answered through the chat template.")
_SYSTEM = flags.DEFINE_string("system", None, "With --chat: a system message before each prompt.")
_REPLY_TO = flags.DEFINE_multi_string("reply_to", [], "Draft a reply to this email: an .eml file, or an mbox with "
                                      "--message_id; repeat the flag for several.")
_MESSAGE_ID = flags.DEFINE_multi_string("message_id", [], "With an mbox --reply_to: the Message-ID of the email to "
                                        "answer; repeat the flag for several.")


def _unescape(text):
  return text.replace("\\n", "\n").replace("\\t", "\t")


def read_prompts(path):
  if not os.path.isfile(path):
    raise UserError(f"--prompts_file={path}: no such file")
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise UserError(f"--prompts_file={path}: cannot read it ({e.strerror}); give a readable file") from None
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    raise UserError(f"--prompts_file={path}, line {line}: not UTF-8 text (a binary file?); give a text file, one "
                    f"prompt a line") from None
  lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")  # As text mode reads them.
  if not path.endswith(".jsonl"):
    return [_unescape(line) for line in lines if line.strip()]
  prompts = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      prompt = json.loads(line)["prompt"]
    except (ValueError, KeyError, TypeError, IndexError):
      prompt = None
    if not isinstance(prompt, str):  # A number or a list would fail in the tokenizer, after the model loaded.
      raise UserError(f"--prompts_file={path}, line {number}: not a JSON object with a 'prompt' string")
    prompts.append(prompt)
  return prompts


def read_emails(paths, message_ids):
  """The emails of --reply_to: each .eml file's message, or each --message_id's message of
  the one mbox given."""
  paths = [storage.absolute_path(p, "reply_to") for p in paths]
  if message_ids and len(paths) != 1:
    raise UserError(f"--message_id picks messages of one mbox: give exactly one --reply_to=MBOX with it, not "
                    f"{len(paths)}")
  if message_ids:
    return [mail.read_email(paths[0], message_id) for message_id in message_ids]
  return [mail.read_email(path) for path in paths]


def check_output(path):
  """--output (absolute): a local file in an existing directory that takes new files
  (tried), checked before the model is loaded, so that no completion is lost at the end."""
  if storage.is_gcs(path):
    raise UserError(f"--output={path}: generate writes a local file; give a local path")
  if os.path.isdir(path):
    raise UserError(f"--output={path} is a directory; give a file name")
  parent = os.path.dirname(path)
  if storage.existing_parent(path, "output") != parent:  # Which names a file in a directory's place.
    raise UserError(f"--output={path}: directory {parent} does not exist; create it first")
  problem = storage.appendable_problem(path) if os.path.exists(path) else storage.writable_problem(parent)
  if problem:
    raise UserError(f"--output={path}: cannot write it ({problem}); pick a writable place")


def main(argv):
  if len(argv) > 1:
    exit_with(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _MODEL.value:
    exit_with("--model is required: a jaxtrain work directory, a Hugging Face model directory or a .gguf file")
  logging.set_verbosity(logging.WARNING)
  logging.get_absl_handler().addFilter(checkpoint.QuietReading())
  try:
    model_path, prompts_file, output = (storage.absolute_path(flag.value, flag.name)
                                        for flag in (_MODEL, _PROMPTS_FILE, _OUTPUT))
    prompts = [_unescape(p) for p in _PROMPT.value] + (read_prompts(prompts_file) if prompts_file else [])
    emails = read_emails(_REPLY_TO.value, _MESSAGE_ID.value)
    if emails and (prompts or _CHAT.value or _SYSTEM.value is not None):
      raise UserError("--reply_to drafts from the email assistant's own prompt; leave out --prompt, --prompts_file, "
                      "--chat and --system")
    if emails:
      prompts = [mail.message_text(e) for e in emails]
    if not prompts:
      raise UserError("give --prompt=TEXT (repeatable), --prompts_file=FILE or --reply_to=EMAIL")
    if _TOP_P.value is not None and not 0 < _TOP_P.value <= 1:
      raise UserError(f"--top_p must be in (0, 1], got {_TOP_P.value}")
    if _SYSTEM.value is not None and not _CHAT.value:
      raise UserError("--system is for --chat: add --chat, or put the text in the prompt")
    if output:
      check_output(output)
    model = lm_lib.load(model_path, _STEP.value, dtype=_DTYPE.value)
    sampling = dict(max_new_tokens=_MAX_NEW.value, temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
                    top_p=_TOP_P.value, seed=_SEED.value, stop=[_unescape(s) for s in _STOP.value])
    if emails:
      completions = model.reply(emails, **sampling)
    elif _CHAT.value:
      system = [{"role": "system", "content": _unescape(_SYSTEM.value)}] if _SYSTEM.value is not None else []
      completions = model.chat([system + [{"role": "user", "content": p}] for p in prompts], **sampling)
    else:
      completions = model.generate(prompts, **sampling)
  except UserError as e:
    exit_with(e)
  for number, (prompt, completion) in enumerate(zip(prompts, completions), 1):
    print(f"--- {number} ---\n{prompt}\n--- reply ---\n{completion}" if _CHAT.value or emails else
          f"--- {number} ---\n{prompt}{completion}")
  if output:
    with open(output, "w", encoding="utf-8") as f:
      for prompt, completion in zip(prompts, completions):
        f.write(json.dumps({"prompt": prompt, "completion": completion}, ensure_ascii=False) + "\n")
  sys.stdout.flush()


if __name__ == "__main__":
  app.run(main, flags_parser=errors.parse_flags)
