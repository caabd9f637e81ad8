"""jaxtrain.runs (tables, the reader API) and jaxtrain.plot (PNGs) on two short digits runs."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from jaxtrain import config as config_lib
from jaxtrain import plot
from jaxtrain import runs
from jaxtrain import train
from test_train import tiny_config

LRS = (3e-3, 3e-4)
STEPS_PER_EPOCH = 1438 // 32  # The digits' train split in batches of 32.


@pytest.fixture(scope="module")
def two_runs(tfds_dir, tmp_path_factory):
  """Two 20-step MLP runs that differ only in the learning rate: train rows every 5 steps,
  evaluations every 10."""
  base = tmp_path_factory.mktemp("compare")
  paths = []
  for lr in LRS:
    config = tiny_config(total_steps=20)
    config.log_every_steps = 5
    config.checkpoint.every_steps = 20
    config.optimizer.lr = lr
    paths.append(str(base / f"lr_{lr:g}"))
    train.run(config, paths[-1])
  return paths


def read_lines(path):
  with open(os.path.join(path, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def write_run(path, rows, config=None, tail=""):
  """A work directory without training: config.json, and metrics.jsonl of `rows` (+ `tail`)."""
  os.makedirs(path)
  with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config or {"input": {"batch_size": 4}, "optimizer": {"lr": 0.1}}, f)
  with open(os.path.join(path, "metrics.jsonl"), "w", encoding="utf-8") as f:
    f.write("".join(json.dumps(row) + "\n" for row in rows) + tail)
  return str(path)


def fails(main, argv, capsys):
  """The one stderr line of a command that refuses `argv`."""
  with pytest.raises(SystemExit) as exit_info:
    main(argv)
  assert exit_info.value.code == 2
  out, err = capsys.readouterr()
  assert out == "" and err.startswith("error: ") and err.count("\n") == 1, err
  return err.strip()


def test_load_reads_the_rows_and_config_the_run_wrote(two_runs):
  for path, lr in zip(two_runs, LRS):
    run = runs.load(path)
    assert run.path == path and run.rows == read_lines(path)
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
      assert run.config == json.load(f)
    assert run.config["optimizer"]["lr"] == lr
    assert [r["step"] for r in run.rows if "train/loss" in r] == [5, 10, 15, 20]
    assert [r["step"] for r in run.rows if "val/accuracy" in r] == [10, 20]
    assert {"train/loss", "train/epoch", "val/accuracy", "val/loss", "val/num_examples"} <= set(run.metrics())


def test_series_final_and_best_against_the_rows(two_runs):
  run = runs.load(two_runs[0])
  lines = read_lines(two_runs[0])
  train_rows = [r for r in lines if "train/loss" in r]
  val_rows = [r for r in lines if "val/accuracy" in r]
  assert run.series("train/loss") == ([5, 10, 15, 20], [r["train/loss"] for r in train_rows])
  xs, ys = run.series("train/loss", x="epoch")
  np.testing.assert_allclose(xs, [r["train/epoch"] for r in train_rows])
  xs, ys = run.series("val/accuracy", x="epoch")  # Evaluations get their epochs from the train rows.
  np.testing.assert_allclose(xs, [10 / STEPS_PER_EPOCH, 20 / STEPS_PER_EPOCH])
  assert ys == [r["val/accuracy"] for r in val_rows]
  assert run.series("val/loss", x="examples")[0] == [320, 640]
  assert run.final("val/accuracy") == (20, val_rows[-1]["val/accuracy"])
  losses = [r["train/loss"] for r in train_rows]
  assert run.best("train/loss") == (train_rows[int(np.argmin(losses))]["step"], min(losses))
  accuracies = [r["val/accuracy"] for r in val_rows]
  assert run.best("val/accuracy") == (val_rows[int(np.argmax(accuracies))]["step"], max(accuracies))


def test_rows_out_of_order_repeated_steps_nans_and_a_half_written_last_line(tmp_path):
  rows = [{"step": 10, "train/loss": 2.0, "train/epoch": 0.5}, {"step": 10, "val/accuracy": 0.5},
          {"step": 20, "train/loss": float("nan"), "train/epoch": 1.0}, {"step": 20, "val/accuracy": 0.7},
          {"step": 10, "val/accuracy": 0.6, "val/error": 0.4}]  # --mode=eval on step 10, appended later.
  run = runs.load(write_run(tmp_path / "run", rows, tail='{"step": 30, "train/lo'))
  assert len(run.rows) == 5
  assert run.series("val/accuracy") == ([10, 20], [0.6, 0.7])
  assert run.series("val/accuracy", x="epoch") == ([0.5, 1.0], [0.6, 0.7])
  assert run.series("val/accuracy", x="examples") == ([40, 80], [0.6, 0.7])
  assert run.best("train/loss") == (10, 2.0) and math.isnan(run.final("train/loss").value)
  assert run.best("val/error") == (10, 0.4)  # 'error': lower is better.


def test_differing_config_and_legend_labels(two_runs, tmp_path):
  loaded = [runs.load(p) for p in two_runs]
  assert runs.differing_config(loaded) == {"optimizer.lr": list(LRS)}
  assert runs.labels(loaded) == ["optimizer.lr=0.003", "optimizer.lr=0.0003"]
  assert config_lib.flatten({"a": {"b": [1, 2], "c": {}}, "d": None}) == {"a.b": [1, 2], "a.c": {}, "d": None}
  same = [runs.load(write_run(tmp_path / name, [{"step": 1, "train/loss": 1.0}])) for name in ("x", "y")]
  assert runs.differing_config(same) == {} and runs.labels(same) == ["x", "y"]
  other = runs.load(write_run(tmp_path / "z", [{"step": 1, "train/loss": 1.0}], {"input": {"batch_size": 8}}))
  assert runs.differing_config(same[:1] + [other]) == {"input.batch_size": [4, 8], "optimizer.lr": [0.1, None]}


def parse_table(text):
  lines = text.strip().split("\n")
  cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
  assert set(lines[1]) == {"|", "-"}
  return cells[0], cells[2:]


def test_the_runs_table_in_process_and_from_the_command_line(two_runs, capsys):
  runs.main(two_runs)
  text = capsys.readouterr().out
  header, rows = parse_table(text)
  assert header == ["run", "optimizer.lr", "train/loss final", "train/loss best", "val/accuracy final",
                    "val/accuracy best", "val/loss final", "val/loss best"]
  for path, lr, row in zip(two_runs, LRS, rows):
    run = runs.load(path)
    expected = [path, json.dumps(lr)]
    for metric in ("train/loss", "val/accuracy", "val/loss"):
      expected += [f"{p.value:.4g} @ {p.step}" for p in (run.final(metric), run.best(metric))]
    assert row == expected
  runs.main([*two_runs, "--metrics=val/num_examples"])
  header, rows = parse_table(capsys.readouterr().out)
  assert header[2:] == ["val/num_examples final", "val/num_examples best"] and rows[0][2] == "359 @ 20"
  result = subprocess.run([sys.executable, "-m", "jaxtrain.runs", *two_runs], cwd=ROOT, capture_output=True,
                          text=True, check=False)
  assert (result.returncode, result.stdout, result.stderr) == (0, text, "")


def test_runs_mistakes_are_one_line(two_runs, tmp_path, capsys):
  good = two_runs[0]
  (tmp_path / "file").write_text("x")
  assert fails(runs.main, [str(tmp_path / "file")], capsys).endswith("file is a file: give a run's work "
                                                                      "directory (with config.json and metrics.jsonl)")
  assert "does not exist" in fails(runs.main, [str(tmp_path / "nowhere")], capsys)
  assert fails(runs.main, [os.path.dirname(good)], capsys) == (
      f"error: {os.path.dirname(good)} is not a run's work directory: it has no config.json and no metrics.jsonl; "
      f"runs inside it: {', '.join(sorted(two_runs))}")
  os.makedirs(tmp_path / "no_config")
  (tmp_path / "no_config" / "metrics.jsonl").write_text("")
  assert fails(runs.main, [str(tmp_path / "no_config")], capsys).endswith("it has no config.json")
  error = fails(runs.main, [*two_runs, "--metrics=train/loss,val/acc"], capsys)
  assert error.startswith("error: no run has the metric 'val/acc' (did you mean 'val/accuracy'?); metrics: "
                          "train/accuracy, ") and "val/loss, val/num_examples" in error
  broken = write_run(tmp_path / "broken", [{"step": 1, "train/loss": 1.0}], tail='{"step": 2,\n{"step": 3}\n')
  assert fails(runs.main, [broken], capsys) == (
      f"error: {broken}/metrics.jsonl:2: not a JSON line (Expecting property name enclosed in double quotes "
      'at column 12): {"step": 2,')
  stepless = write_run(tmp_path / "stepless", [{"train/loss": 1.0}])
  assert f"{stepless}/metrics.jsonl:1: a row is a JSON object" in fails(runs.main, [stepless], capsys)
  empty = write_run(tmp_path / "empty", [])
  assert fails(runs.main, [empty], capsys) == f"error: no metrics yet in {empty}/metrics.jsonl"
  assert fails(runs.main, [good, "--metrics= ,"], capsys) == (
      "error: --metrics is empty: name one or more metrics, comma-separated")
  assert fails(runs.main, [], capsys) == "error: the following arguments are required: RUN"
  assert fails(runs.main, [good, "--metric=x"], capsys) == (
      "error: unrecognized arguments: --metric=x (did you mean '--metrics'?); `python -m jaxtrain.runs --help` lists "
      "the flags")


def test_a_binary_line_is_named_and_no_control_character_is_printed(tmp_path, capsys):
  """A garbage line (terminal escapes, bytes that are not UTF-8) is shown escaped, not sent
  to the terminal; so are control characters inside a JSON line that is not a row."""
  garbage = write_run(tmp_path / "garbage", [{"step": 1, "train/loss": 1.0}],
                      tail='\x1b]0;owned\x07\x1b[2J\x00{"step": 2}\n{"step": 3}\n')
  assert fails(runs.main, [garbage], capsys) == (
      f"error: {garbage}/metrics.jsonl:2: not a JSON line (Expecting value at column 1): "
      "\\x1b]0;owned\\x07\\x1b[2J\\x00{\"step\": 2}")
  binary = write_run(tmp_path / "binary", [{"step": 1, "train/loss": 1.0}])
  with open(os.path.join(binary, "metrics.jsonl"), "ab") as f:
    f.write(b"\x89PNG\r\x1a\x1b[31m\xff\n" + b"\x07" * 100 + b'\n{"step": 3}\n')
  assert fails(runs.main, [binary], capsys) == (
      f"error: {binary}/metrics.jsonl:2: not a JSON line (not UTF-8): \\x89PNG\\r\\x1a\\x1b[31m\\xff")
  c1 = write_run(tmp_path / "c1", [{"step": 1, "train/loss": 1.0}], tail='"\x9b2J\u2028"\n')
  assert fails(runs.main, [c1], capsys) == (
      f'error: {c1}/metrics.jsonl:2: a row is a JSON object with an integer "step": "\\x9b2J\\u2028"')


def test_the_table_escapes_control_characters_of_names_and_values(tmp_path, capsys):
  rows = [{"step": 1, "train/loss": 1.0, "val/\x1b[2Jx": 0.5}]
  first = write_run(tmp_path / "a", rows, {"name": "\x1b]0;owned\x07"})
  second = write_run(tmp_path / "b", rows, {"name": "plain"})
  runs.main([first, second])
  header, table_rows = parse_table(capsys.readouterr().out)
  assert header[:5] == ["run", "name", "train/loss final", "train/loss best", "val/\\x1b[2Jx final"]
  assert [row[1] for row in table_rows] == ["\\x1b]0;owned\\x07", "plain"]
  assert fails(runs.main, [first, "--metrics=zzz"], capsys) == (
      f"error: {first} has no metric 'zzz'; metrics: train/loss, val/\\x1b[2Jx")


def test_smoothing_is_tensorboards_debiased_moving_average():
  values = [1.0, 3.0, float("nan"), 2.0]
  # By hand: a = 0.6a + 0.4v; shown as a / (1 - 0.6**n).
  expected = [1.0, (0.6 * 0.4 + 1.2) / (1 - 0.36), float("nan"), (0.6 * 1.44 + 0.8) / (1 - 0.216)]
  np.testing.assert_allclose(plot.smooth(values, 0.6), expected)
  assert plot.smooth([1.0, 3.0], 0.0) == [1.0, 3.0]


def ema(values, weight):
  """An independent reference: TensorBoard's formula with numpy."""
  n = np.arange(1, len(values) + 1)
  numerator = [sum((1 - weight) * weight**(k - j) * values[j] for j in range(k + 1)) for k in range(len(values))]
  return np.array(numerator) / (1 - weight**n)


def test_curves_are_the_smoothed_train_series_and_the_raw_evaluations(two_runs):
  loaded = [runs.load(p) for p in two_runs]
  assert plot.default_metrics(loaded) == ["train/loss", "val/accuracy", "val/loss"]
  panels = plot.curves(loaded, ["train/loss", "val/accuracy"], x="epoch", smooth_weight=0.8)
  for run, curve in zip(loaded, panels["train/loss"]):
    xs, ys = run.series("train/loss", "epoch")
    assert (curve.xs, curve.ys) == (xs, ys)
    np.testing.assert_allclose(curve.smoothed, ema(ys, 0.8), rtol=1e-12)
  assert [c.label for c in panels["val/accuracy"]] == ["optimizer.lr=0.003", "optimizer.lr=0.0003"]
  assert all(c.smoothed is None for c in panels["val/accuracy"])
  assert all(c.smoothed is None for c in plot.curves(loaded, ["train/loss"], smooth_weight=0)["train/loss"])


def test_the_plot_is_a_png_with_the_runs_curves(two_runs, tmp_path, capsys):
  pytest.importorskip("matplotlib")
  from matplotlib import image  # pylint: disable=import-outside-toplevel
  out = tmp_path / "new" / "dir" / "lr.png"
  plot.main([*two_runs, "--metrics=train/loss,val/accuracy", f"--out={out}"])
  assert capsys.readouterr().out == f"wrote {out}: train/loss, val/accuracy of 2 runs against step\n"
  assert os.listdir(out.parent) == ["lr.png"]  # Nothing partial left behind.
  with open(out, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"

  fig = plot.figure(two_runs, ["train/loss", "val/accuracy"])
  panels = plot.curves([runs.load(p) for p in two_runs], ["train/loss", "val/accuracy"])
  pixels = image.imread(out)
  width, height = fig.get_size_inches() * plot.DPI
  assert pixels.shape[:2] == (round(height), round(width))
  fig.savefig(tmp_path / "again.png", format="png", dpi=plot.DPI)  # Lays the axes out as in the file.
  for ax, (metric, lines) in zip(fig.axes, panels.items()):
    drawn = [(list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()]
    if metric == "train/loss":  # Raw (faint) then smoothed, per run.
      assert drawn == [line for c in lines for line in ((c.xs, c.ys), (c.xs, c.smoothed))]
      for c, run in zip(lines, two_runs):
        np.testing.assert_allclose(c.smoothed, ema(runs.load(run).series("train/loss")[1], 0.6), rtol=1e-12)
    else:
      assert drawn == [(c.xs, c.ys) for c in lines]
    # Each run's colour is in the panel's pixels: the curves were drawn, inside it.
    box = ax.get_window_extent()
    panel = pixels[round(height - box.y1):round(height - box.y0), round(box.x0):round(box.x1), :3]
    for color in ((0.122, 0.467, 0.706), (1.0, 0.498, 0.055)):  # C0 and C1
      assert (np.abs(panel - color).max(axis=-1) < 0.05).sum() > 30, (metric, color)
  assert [t.get_text() for t in fig.legends[0].get_texts()] == ["optimizer.lr=0.003", "optimizer.lr=0.0003"]


def test_plot_mistakes_are_one_line_and_write_nothing(two_runs, tmp_path, capsys, monkeypatch):
  out = tmp_path / "new" / "plot.png"
  cases = {
      "--smooth=1": "error: --smooth=1.0: give a weight in [0, 1) (0: no smoothing; TensorBoard's default 0.6)",
      "--smooth=-0.1": "error: --smooth=-0.1: give a weight in [0, 1) (0: no smoothing; TensorBoard's default 0.6)",
      "--smooth=nan": "error: --smooth=nan: give a weight in [0, 1) (0: no smoothing; TensorBoard's default 0.6)",
      "--smooth=abc": "error: argument --smooth: invalid float value: 'abc'",
      "--x=time": "error: --x=time: use step, epoch or examples",
      "--metrics=val/acc": "error: no run has the metric 'val/acc' (did you mean 'val/accuracy'?); metrics: ",
  }
  for flag, message in cases.items():
    assert fails(plot.main, [*two_runs, flag, f"--out={out}"], capsys).startswith(message)
  assert fails(plot.main, [*two_runs, f"--out={tmp_path}"], capsys) == (
      f"error: --out={tmp_path}: give a file name ending in .png")
  os.makedirs(tmp_path / "dir.png")
  assert fails(plot.main, [*two_runs, f"--out={tmp_path}/dir.png"], capsys).endswith("is a directory: give a .png file")
  assert fails(plot.main, [*two_runs], capsys) == "error: the following arguments are required: --out"
  assert "does not exist" in fails(plot.main, [str(tmp_path / "nowhere"), f"--out={out}"], capsys)
  no_epochs = write_run(tmp_path / "no_epochs", [{"step": 5, "val/loss": 1.0}])
  assert fails(plot.main, [no_epochs, "--x=epoch", f"--out={out}"], capsys) == (
      f"error: {no_epochs} has no train/epoch in its rows yet, so no epochs: plot against --x=step")
  monkeypatch.setitem(sys.modules, "matplotlib", None)  # As if it were not installed.
  assert fails(plot.main, [*two_runs, f"--out={out}"], capsys) == (
      "error: matplotlib is not installed: pip install -e '.[plots]'")
  assert not (tmp_path / "new").exists()
