"""The work directory's layout: the one module that knows its file names.

    DIR/config.json            the resolved config (config_history/until_step_N.json: earlier ones)
    DIR/metrics.jsonl          one JSON row per log and evaluation
    DIR/samples.jsonl          texts of evaluators that make text
    DIR/checkpoints/<step>/    Orbax, one directory per saved step (checkpoints_set_aside/: damaged ones)
    DIR/tensorboard/           event files
    DIR/tokenizer.json | tokenizer.model (+ tokenizer_config.json)   the run's tokenizer, kept

Every other module asks here: where the checkpoints are, what the config says (one line
when config.json is missing or damaged), which step of a run to read, which tokenizer file
the run kept. Paths may be local or gs:// (`storage`).
"""

import json
import os

from jaxtrain.errors import UserError
from jaxtrain.rundir import storage

CHECKPOINTS = "checkpoints"
SET_ASIDE = "checkpoints_set_aside"
CONFIG = "config.json"
CONFIG_HISTORY = "config_history"
METRICS = "metrics.jsonl"
SAMPLES = "samples.jsonl"
TENSORBOARD = "tensorboard"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")  # What a run keeps beside config.json.
TOKENIZER_CONFIG = "tokenizer_config.json"  # A tokenizer.json's special tokens (and chat template).
CHAT_TEMPLATE = "chat_template.jinja"  # A Hugging Face directory's chat template, where it has its own file.


def checkpoints(workdir):
  """DIR/checkpoints, absolute (Orbax wants absolute paths)."""
  return os.path.join(storage.absolute(workdir), CHECKPOINTS)


def has_checkpoints(workdir):
  """Whether `workdir` is a run's work directory (it has checkpoints/, complete or not)."""
  return bool(workdir) and storage.isdir(os.path.join(workdir, CHECKPOINTS))


def newest_complete_step(workdir):
  """The newest step of `workdir` that Orbax finalized, or None: a save in progress or cut
  short is `<step>.orbax-checkpoint-tmp-*`, not a number; on gs:// a step is complete once
  its commit marker is there (Orbax writes in place and marks it last)."""
  directory = checkpoints(workdir)
  try:
    steps = [int(name) for name in storage.listdir(directory) if name.isdigit()]
    if storage.is_gcs(directory):
      steps = [step for step in steps if storage.isfile(f"{directory}/{step}/commit_success.txt")]
  except Exception:  # pylint: disable=broad-except  (OSError; gcsfs's HttpError: this only names a step in messages)
    return None
  return max(steps, default=None)


def pick_step(saved, step, workdir, key="step"):
  """`step` if `saved` (a run's checkpoint steps) has it; the newest for None; else one line."""
  if not saved:
    raise UserError(f"{workdir} has no complete checkpoint yet")
  if step is None:
    return saved[-1]
  if step not in saved:
    raise UserError(f"{key}: {workdir} has no checkpoint at step {step}; it has "
                    f"{', '.join(map(str, saved)) or 'none'}")
  return step


def config_path(workdir):
  return os.path.join(workdir, CONFIG)


def read_config(workdir, key=None):
  """A run's config.json as a dict; one line naming the file when it is missing or damaged
  (`key`: the flag or config key that named the run, for the message)."""
  path = config_path(workdir)
  if not storage.isfile(path):
    raise UserError(f"{f'{key}=' if key else ''}{workdir} has no {CONFIG}; give the work directory of a jaxtrain run")
  try:
    config = json.loads(storage.read_text(path))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f"{path} is damaged ({_why(e)}); restore it from a copy, or start again in a new "
                    f"--workdir") from None
  if not isinstance(config, dict):
    raise UserError(f"{path} is damaged (not a JSON object); restore it from a copy, or start again in a new "
                    f"--workdir")
  return config


def saved_config(workdir):
  """The config.json of a run to resume (it has a complete checkpoint), else None."""
  if newest_complete_step(workdir) is None or not storage.isfile(config_path(workdir)):
    return None
  return read_config(workdir)


def kept_tokenizer(workdir):
  """The tokenizer file a run keeps, as a local path (a copy of a gs:// one: the tokenizer
  libraries read local files, and its tokenizer_config.json comes along), or None."""
  kept = next((os.path.join(workdir, name) for name in TOKENIZER_FILES
               if storage.isfile(os.path.join(workdir, name))), None)
  return storage.local_copy(kept, beside=(TOKENIZER_CONFIG,)) if kept and storage.is_gcs(kept) else kept


def keep_tokenizer(workdir, tokenizer):
  """Copies the run's tokenizer beside config.json (with the tokenizer_config.json that names
  a tokenizer.json's special tokens): loading and exporting the run need no data cache."""
  names = {tokenizer.path: tokenizer.file_name}
  special = os.path.join(os.path.dirname(tokenizer.path), TOKENIZER_CONFIG)
  if tokenizer.kind != "sentencepiece" and os.path.exists(special):
    names[special] = TOKENIZER_CONFIG
  template = os.path.join(os.path.dirname(tokenizer.path), CHAT_TEMPLATE)
  if os.path.exists(template):  # Where transformers >= 4.43 keeps the chat template.
    names[template] = CHAT_TEMPLATE
  for source, name in names.items():
    storage.copy_in(source, os.path.join(workdir, name))
  if tokenizer.chat_template and TOKENIZER_CONFIG not in names.values() and CHAT_TEMPLATE not in names.values():
    # A SentencePiece model's template (tokenizer_config.json is not kept with it): a file of its own.
    storage.write_text(os.path.join(workdir, CHAT_TEMPLATE), tokenizer.chat_template)


def _why(error):
  if isinstance(error, UnicodeDecodeError):
    return f"not UTF-8 at byte {error.start}"
  return f"{error.msg} at line {error.lineno} column {error.colno}"
