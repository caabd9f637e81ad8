"""The commands at their edge: a flag mistake, an output path that cannot be written and an
input file that cannot be read each end in one `error: ...` line and exit status 2, before
any model is loaded or any work is done, and nothing the user had is changed.

No test here trains a model: where a command would go on to load one, it is given a
directory that holds none, so that a check made too late shows as another error."""

import json
import os
import subprocess
import sys

import pytest

import hf_dirs
from conftest import ROOT

DIGITS = os.path.join(ROOT, "experiments", "digits.py")


def command(name, *args, prefix=()):
  return subprocess.run([*prefix, sys.executable, "-m", f"jaxtrain.{name}", *args], capture_output=True, text=True,
                        timeout=300, cwd=ROOT)


def the_error(result):
  """The one `error:` line of a command that failed as a user's mistake does (launch logs
  INFO lines before it)."""
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  return errors[0]


def without_override():
  """A command run as root writes where the modes say no (CAP_DAC_OVERRIDE); run without
  that capability, it meets a read-only directory as any other user does."""
  return ("setpriv", "--bounding-set=-dac_override") if os.geteuid() == 0 else ()


def snapshot(directory):
  return {str(p.relative_to(directory)): p.read_bytes() if p.is_file() else None for p in sorted(directory.rglob("*"))}


# ---- Flag mistakes: absl's and argparse's, in the commands' own words -------------------------------

FLAG_CASES = [
    ("generate", ["--model=m", "--prompt=x", "--max_new_tokens=0"],
     "error: --max_new_tokens must be a positive integer, got 0"),
    ("generate", ["--model=m", "--prompt=x", "--temperature=-1"],
     "error: --temperature must be a non-negative number, got -1"),
    ("generate", ["--model=m", "--prompt=x", "--max_new_token=3"],
     "error: unknown flag --max_new_token (did you mean '--max_new_tokens'?); "
     "`python -m jaxtrain.generate --help` lists the flags"),
    ("generate", ["--model=m", "--prompt=x", "--dtype=float16"],
     "error: --dtype must be one of float32, bfloat16, got float16"),
    ("lm_eval", ["--model=m", "--tasks=t.jsonl", "--limit=0"], "error: --limit must be a positive integer, got 0"),
    ("lm_eval", ["--model=m", "--tasks=t.jsonl", "--log_samples=maybe"],
     "error: --log_samples must be true or false, got maybe"),
    ("lm_eval", ["--model=m", "--tasks=t.jsonl", "--step"], "error: --step needs a value: give --step=VALUE"),
    ("export", ["--workdir=w", "--out=o", "--bogus=1"],
     "error: unknown flag --bogus; `python -m jaxtrain.export --help` lists the flags"),
    ("launch", [f"--config={DIGITS}"],
     "error: --workdir is required: where the run keeps config, metrics and checkpoints"),
    ("launch", [f"--config={DIGITS}", "--workdir=w", "--mode=evaluate"],
     "error: --mode must be one of train, eval, dry_run, lr_find, got evaluate"),
    ("plot", ["r", "--out=x.png", "--smoth=0.5"],
     "error: unrecognized arguments: --smoth=0.5 (did you mean '--smooth'?); "
     "`python -m jaxtrain.plot --help` lists the flags"),
]


@pytest.mark.parametrize("name, args, message", FLAG_CASES, ids=[f"{c[0]} {c[1][-1]}" for c in FLAG_CASES])
def test_a_flag_mistake_is_one_line_and_exit_status_2(name, args, message):
  result = command(name, *args)
  assert the_error(result) == message
  assert result.stderr.strip() == message  # Nothing else: no "FATAL Flags parsing error", no usage.


# ---- Output paths: checked before the work ----------------------------------------------------------


def test_generate_checks_its_output_before_loading_the_model(tmp_path):
  no_model = tmp_path / "no_model"  # Loading it would fail: the output is checked first.
  no_model.mkdir()
  a_file = tmp_path / "notes.txt"
  a_file.write_text("mine\n")
  cases = [(tmp_path, f"--output={tmp_path} is a directory; give a file name"),
           (tmp_path / "missing" / "out.jsonl",
            f"--output={tmp_path / 'missing' / 'out.jsonl'}: directory {tmp_path / 'missing'} does not exist; "
            f"create it first"),
           (a_file / "out.jsonl", f"--output={a_file / 'out.jsonl'}: {a_file} is a file, not a directory")]
  for output, message in cases:
    assert the_error(command("generate", f"--model={no_model}", "--prompt=x", f"--output={output}")) == \
        f"error: {message}"
  assert a_file.read_text() == "mine\n" and not (tmp_path / "missing").exists()


def test_lm_eval_checks_its_output_path_before_loading_the_model(tmp_path):
  task = tmp_path / "task.jsonl"
  task.write_text(json.dumps({"query": "q", "choices": ["a", "b"], "gold": 0}) + "\n")
  a_file = tmp_path / "results"
  a_file.write_text("mine\n")
  result = command("lm_eval", f"--model={tmp_path / 'no_model'}", f"--tasks={task}",
                   f"--output_path={a_file / 'out'}")
  assert the_error(result) == f"error: --output_path={a_file / 'out'}: {a_file} is a file, not a directory"
  assert a_file.read_text() == "mine\n"


def test_export_to_a_read_only_directory_is_refused_before_loading_the_run(tmp_path):
  run = tmp_path / "run"
  (run / "checkpoints").mkdir(parents=True)  # No checkpoint in it: loading would fail.
  read_only = tmp_path / "read_only"
  read_only.mkdir()
  read_only.chmod(0o555)
  try:
    result = command("export", f"--workdir={run}", f"--out={read_only / 'hf'}", prefix=without_override())
  finally:
    read_only.chmod(0o755)
  assert the_error(result) == (f"error: --out={read_only / 'hf'}: cannot write in {read_only} (Permission denied); "
                               f"export to a writable place")
  assert not os.listdir(read_only)


def test_evaluating_a_read_only_run_is_refused_before_building_and_changes_nothing(tfds_dir, tmp_path):
  run = tmp_path / "run"
  (run / "checkpoints").mkdir(parents=True)  # Empty: a restore would fail, and tell.
  (run / "metrics.jsonl").write_text(json.dumps({"step": 10, "val/accuracy": 0.5}) + "\n")
  before = snapshot(run)
  run.chmod(0o555)
  try:
    result = command("launch", f"--config={DIGITS}:mlp", f"--workdir={run}", "--mode=eval",
                     prefix=without_override())
  finally:
    run.chmod(0o755)
  assert the_error(result) == (f"error: --workdir={run}: cannot write in {run} (Permission denied); evaluation "
                               f"appends its results to metrics.jsonl there: make the run writable, or evaluate a copy")
  assert "Preparing dataset" not in result.stderr and snapshot(run) == before


# ---- Input files that cannot be read ----------------------------------------------------------------


def test_generate_names_a_prompts_file_it_cannot_read(tmp_path):
  no_model = tmp_path / "no_model"
  no_model.mkdir()
  binary = tmp_path / "prompts.txt"
  binary.write_bytes(b"def f():\n\x89PNG\r\n\x1a\n\x00\xff\n")
  assert the_error(command("generate", f"--model={no_model}", f"--prompts_file={binary}")) == (
      f"error: --prompts_file={binary}, line 2: not UTF-8 text (a binary file?); give a text file, one prompt a line")
  for line in ('{"prompt": 3}', '{"prompt": ["def "]}', "3", '["def "]'):
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text(json.dumps({"prompt": "def "}) + "\n" + line + "\n")
    assert the_error(command("generate", f"--model={no_model}", f"--prompts_file={jsonl}")) == (
        f"error: --prompts_file={jsonl}, line 2: not a JSON object with a 'prompt' string")


def test_lm_eval_names_a_task_file_it_cannot_read(tmp_path):
  binary = tmp_path / "task.jsonl"
  binary.write_bytes(json.dumps({"query": "q", "choices": ["a"], "gold": 0}).encode() + b"\n\xff\xfe\x00\x01\n")
  result = command("lm_eval", f"--model={tmp_path / 'no_model'}", f"--tasks={binary}")
  assert the_error(result) == (f"error: task file {binary}, line 2: not UTF-8 text (a binary file?); give a .jsonl "
                               f"file, one JSON document a line")


def test_generate_names_a_truncated_safetensors_file(tmp_path):
  model = hf_dirs.make(str(tmp_path / "hf"), "gqa_tied")
  weights = os.path.join(model, "model.safetensors")
  with open(weights, "rb") as f:
    data = f.read()
  with open(weights, "wb") as f:
    f.write(data[:len(data) // 2])  # As an interrupted download leaves it.
  error = the_error(command("generate", f"--model={model}", "--prompt=def "))
  assert weights in error
