"""The work directory's layout (jaxtrain/rundir/layout.py): one reader of config.json for
every command, which says in one line when it is damaged and changes nothing."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, tiny_lm
from jaxtrain.errors import UserError
from jaxtrain.lm import export as export_lib
from jaxtrain.lm import language_model as lm_lib
from jaxtrain.rundir import layout
from jaxtrain import train
from jaxtrain.training import build as build_lib

DAMAGED = b'{"input": {"batch_size": 8, "data": {"seq_len": 64'  # Cut short, as a full disk or a kill leaves it.


@pytest.fixture
def damaged(pretrained, tmp_path):
  """A copy of a trained LM run whose config.json was cut short."""
  workdir = str(tmp_path / "run")
  shutil.copytree(pretrained, workdir)
  with open(os.path.join(workdir, "config.json"), "wb") as f:
    f.write(DAMAGED)
  return workdir


def message(workdir):
  return (f"{workdir}/config.json is damaged (Expecting ',' delimiter at line 1 column 51); restore it from a copy, "
          f"or start again in a new --workdir")


def unchanged(workdir):
  with open(os.path.join(workdir, "config.json"), "rb") as f:
    return f.read() == DAMAGED


def test_loading_exporting_and_starting_from_a_damaged_run_say_so_in_one_line(damaged, corpus, tmp_path):
  with pytest.raises(UserError) as e:
    lm_lib.load(damaged)
  assert str(e.value) == message(damaged)
  with pytest.raises(UserError) as e:
    export_lib.export(damaged, "hf", str(tmp_path / "out"))
  assert str(e.value) == message(damaged) and not os.path.exists(tmp_path / "out")
  config = tiny_lm(corpus)
  config.init_from = dict(workdir=damaged, model=True)
  with pytest.raises(UserError) as e:
    build_lib.build(config, str(tmp_path / "new"))
  assert str(e.value) == message(damaged) and not os.path.exists(tmp_path / "new")
  assert unchanged(damaged)


def test_resuming_a_run_whose_config_json_is_damaged_stops_before_building(damaged, corpus, monkeypatch):
  def no_build(*args, **kwargs):
    raise AssertionError("built before reading config.json")
  monkeypatch.setattr(train, "build", no_build)
  with pytest.raises(UserError) as e:
    train.run(tiny_lm(corpus), damaged)
  assert str(e.value) == message(damaged)
  assert unchanged(damaged) and not os.path.exists(os.path.join(damaged, layout.CONFIG_HISTORY))


@pytest.mark.parametrize("command", ["generate", "lm_eval"])
def test_the_commands_print_it_as_one_line(damaged, tmp_path, command):
  args = {"generate": ["--prompt=def"],
          "lm_eval": [f"--tasks={tmp_path / 't.jsonl'}", f"--output_path={tmp_path / 'out'}"]}[command]
  (tmp_path / "t.jsonl").write_text(json.dumps({"query": "a", "choices": ["b", "c"], "gold": 0}) + "\n")
  result = subprocess.run([sys.executable, "-m", f"jaxtrain.{command}", f"--model={damaged}", *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert result.returncode == 2, result.stderr[-2000:]
  assert [line for line in result.stderr.splitlines() if line.startswith("error: ")] == [f"error: {message(damaged)}"]
  assert "Traceback" not in result.stderr
  assert unchanged(damaged) and not os.path.exists(tmp_path / "out")


def test_the_newest_complete_step_and_picking_a_step(tmp_path):
  workdir = str(tmp_path)
  assert layout.newest_complete_step(workdir) is None and not layout.has_checkpoints(workdir)
  for name in ("10", "20", "30.orbax-checkpoint-tmp-4"):
    os.makedirs(os.path.join(workdir, "checkpoints", name))
  assert layout.newest_complete_step(workdir) == 20 and layout.has_checkpoints(workdir)
  assert layout.pick_step([10, 20], None, workdir) == 20
  assert layout.pick_step([10, 20], 10, workdir) == 10
  with pytest.raises(UserError, match=rf"^--step: {workdir} has no checkpoint at step 15; it has 10, 20$"):
    layout.pick_step([10, 20], 15, workdir, key="--step")
  with pytest.raises(UserError, match=rf"^--workdir={workdir} has no config.json; give the work directory"):
    layout.read_config(workdir, key="--workdir")
