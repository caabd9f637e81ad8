"""config.profile: a JAX profiler trace of the chosen steps in WORKDIR/profile, with the
run's results unchanged, and its mistakes as one line."""

import gzip
import json
import os

import pytest

from jaxtrain.errors import UserError
from jaxtrain import train
from test_train import read_rows, tiny_config


def test_a_trace_of_the_chosen_steps_changes_nothing_else(tfds_dir, tmp_path, caplog):
  config = tiny_config(total_steps=12)
  plain = str(tmp_path / "plain")
  train.run(config, plain)
  config.profile = dict(start_step=4, num_steps=3)
  traced = str(tmp_path / "traced")
  with caplog.at_level("INFO"):
    train.run(config, traced)
  line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Profiler trace"))
  assert line.startswith(f"Profiler trace of steps 4-6 in {traced}/profile: tensorboard --logdir=")
  (session,) = os.listdir(os.path.join(traced, "profile", "plugins", "profile"))
  files = os.listdir(os.path.join(traced, "profile", "plugins", "profile", session))
  assert any(f.endswith(".xplane.pb") for f in files) and "perfetto_trace.json.gz" in files
  with gzip.open(os.path.join(traced, "profile", "plugins", "profile", session, "perfetto_trace.json.gz")) as f:
    trace = json.load(f)
  names = {event.get("name", "") for event in trace["traceEvents"]}
  assert sum("train_step" in name for name in names) >= 1  # The compiled step ran inside the trace.
  timings = ("per_sec", "seconds")
  drop = lambda rows: [{k: v for k, v in r.items() if not any(t in k for t in timings)} for r in rows]  # noqa: E731
  assert drop(read_rows(traced)) == drop(read_rows(plain))  # Timings aside, the same run.
  assert not os.path.exists(os.path.join(plain, "profile"))


@pytest.mark.parametrize("profile, message", [
    (dict(start_step=0), r"config key 'profile.start_step'=0 with num_steps=5 traces steps 0..4, which must lie in "
                         r"1..11 \(the run trains 12 steps\)"),
    (dict(start_step=10, num_steps=3), r"traces steps 10..12, which must lie in 1..11"),
    (dict(start_step=2, num_steps=0), r"config key 'profile.num_steps' must be at least 1, got 0"),
    (dict(start_step=2, num_step=3), r"unknown config key 'profile.num_step' \(did you mean 'profile.num_steps'\?\)"),
])
def test_profile_mistakes_are_one_line(tfds_dir, tmp_path, profile, message):
  config = tiny_config(total_steps=12)
  config.profile = profile
  with pytest.raises(UserError, match=message):
    train.run(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")
