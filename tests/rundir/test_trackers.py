"""config.trackers: a tracker gets what metrics.jsonl gets (the interface, with a tracker
of the test's own), Weights & Biases offline when the wandb package is there, and the
mistakes as one line."""

import os
import sys

import pytest

from jaxtrain.errors import UserError
from jaxtrain import train
from test_train import read_rows, tiny_config


class Recorder:
  """A tracker in a few lines: it keeps what it is given."""
  calls = []

  def __init__(self, section):
    self.label = section.get("label", "recorder", kind=str)

  def start(self, workdir, config, start_step):
    Recorder.calls.append(("start", workdir, config["total_steps"], start_step))

  def write(self, step, scalars):
    Recorder.calls.append(("write", step, scalars))

  def write_texts(self, step, name, records):
    Recorder.calls.append(("texts", step, name, records))

  def close(self):
    Recorder.calls.append(("close",))


def test_a_tracker_gets_every_row_metrics_jsonl_gets_and_starts_again_on_resume(tfds_dir, tmp_path):
  Recorder.calls.clear()
  config = tiny_config(total_steps=20)
  config.trackers = dict(mine=dict(type="test_trackers:Recorder", label="x"))
  workdir = str(tmp_path / "run")
  train.run(config, workdir)
  assert Recorder.calls[0] == ("start", workdir, 20, 0) and Recorder.calls[-1] == ("close",)
  written = [(c[1], c[2]) for c in Recorder.calls if c[0] == "write"]
  rows = [(r["step"], {k: v for k, v in r.items() if k != "step"}) for r in read_rows(workdir)]
  assert written == rows and len(rows) == 4  # Train and val rows at steps 10 and 20.
  Recorder.calls.clear()
  config.total_steps = 30
  train.run(config, workdir)  # Resumed from step 20.
  assert Recorder.calls[0] == ("start", workdir, 30, 20)
  assert [c[1] for c in Recorder.calls if c[0] == "write"] == [30, 30]


@pytest.mark.parametrize("trackers, message", [
    (dict(mine=dict(type="test_trackers:Recorder", lable="x")),
     r"unknown config key 'trackers.mine.lable' \(did you mean 'trackers.mine.label'\?\)"),
    (dict(wandbb=dict()), r"unknown tracker 'wandbb' \(did you mean 'wandb'\?\)"),
])
def test_tracker_mistakes_are_one_line(tfds_dir, tmp_path, trackers, message):
  config = tiny_config()
  config.trackers = trackers
  with pytest.raises(UserError, match=message):
    train.run(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def test_wandb_without_the_package_is_one_line(tfds_dir, tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)
  config = tiny_config()
  config.trackers = dict(wandb=dict(project="digits"))
  with pytest.raises(UserError, match=r"config key 'trackers.wandb' needs the wandb package: pip install -e "
                                      r"'.\[wandb\]'"):
    train.run(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def test_wandb_offline_keeps_the_run_beside_metrics_jsonl(tfds_dir, tmp_path, monkeypatch):
  wandb = pytest.importorskip("wandb")
  monkeypatch.setenv("WANDB_SILENT", "true")
  logged, log = [], wandb.sdk.wandb_run.Run.log

  def spy(run, data, step=None, **kwargs):
    logged.append((step, dict(data)))
    return log(run, data, step=step, **kwargs)

  monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", spy)
  config = tiny_config(total_steps=20)
  config.trackers = dict(wandb=dict(project="digits", mode="offline", tags=("test",)))
  workdir = str(tmp_path / "run")
  train.run(config, workdir)
  assert logged == [(r["step"], {k: v for k, v in r.items() if k != "step"}) for r in read_rows(workdir)]
  with open(os.path.join(workdir, "wandb_run_id"), encoding="utf-8") as f:
    run_id = f.read()
  (offline,) = [d for d in os.listdir(os.path.join(workdir, "wandb")) if d.startswith("offline-run-")]
  assert offline.endswith(run_id)
  assert os.path.getsize(os.path.join(workdir, "wandb", offline, f"run-{run_id}.wandb")) > 1000  # What `wandb sync` uploads.
