"""metrics.jsonl across restarts, and the console lines."""

import io
import json

from absl import logging

from jaxtrain.rundir import metrics


def rows(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_resumed_writer_replaces_the_rows_after_its_step(tmp_path):
  writer = metrics.Writer(str(tmp_path))
  for step in (10, 20, 30):
    writer.write(step, {"train/loss": step / 10})
  writer.close()
  writer = metrics.Writer(str(tmp_path), start_step=20)
  writer.write(30, {"train/loss": 9.0})
  writer.close()
  assert rows(tmp_path / "metrics.jsonl") == [
      {"step": 10, "train/loss": 1.0}, {"step": 20, "train/loss": 2.0}, {"step": 30, "train/loss": 9.0}]


def test_a_last_row_cut_short_by_a_crash_is_dropped(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 10, "train/loss": 1.0}\n{"step": 20, "train/lo')
  metrics.Writer(str(tmp_path), start_step=10).close()
  assert rows(path) == [{"step": 10, "train/loss": 1.0}]


def test_progress_line_reads_well_in_a_log_file():
  line = metrics.progress_line(300, 440, {"loss": 0.01234, "lr": 0.00102},
                               {"steps_per_sec": 56.7, "examples_per_sec": 7257.6, "eta_seconds": 2.4})
  assert line == "step 300/440 (68.2%) | loss 0.0123 | lr 0.00102 | 56.7 steps/s | 7.3k examples/s | ETA 0:00:02"
  assert metrics.eval_line("val", {"accuracy": 0.99164, "num_examples": 359}) == \
      "val: accuracy 0.9916 | num_examples 359"


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_the_progress_line_updates_in_place_on_a_terminal_and_is_a_log_line_elsewhere(caplog):
  terminal = _Terminal()
  metrics.log_progress("step 10/20", stream=terminal)
  metrics.log_progress("step 20/20", stream=terminal)
  assert terminal.getvalue().count("\r\x1b[K") == 2 and terminal.getvalue().endswith(" step 20/20")
  with caplog.at_level("INFO", logger="absl"):
    logging.info("val: accuracy 1.0")  # Another log line ends the progress line first.
    assert terminal.getvalue().endswith("step 20/20\n")
    logging.info("val: accuracy 1.0")
  assert terminal.getvalue().count("\n") == 1
  caplog.clear()
  with caplog.at_level("INFO"):
    metrics.log_progress("step 30/40", stream=io.StringIO())  # A file or a pipe: a log line.
  assert [r.getMessage() for r in caplog.records] == ["step 30/40"]
