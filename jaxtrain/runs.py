"""Runs side by side: their metrics and configs, as a table on the command line or from Python.

    python -m jaxtrain.runs RUN [RUN ...] [--metrics=train/loss,val/accuracy]

prints a markdown table with one row per run: its path, the config values that differ
between the runs, and for each metric its final value and its best, each with its step
(`value @ step`). The default metrics are train/loss and every evaluator's metrics, less
counts such as val/num_examples. In a notebook:

    import jaxtrain.runs
    run = jaxtrain.runs.load("runs/digits")
    run.rows                                 # metrics.jsonl: [{"step": 50, "train/loss": ...}, ...]
    run.config                               # config.json, as a dict
    xs, ys = run.series("val/accuracy", x="epoch")   # x: step, epoch or examples
    run.final("val/accuracy"), run.best("val/loss")  # Point(step, value)
    jaxtrain.runs.differing_config([run, jaxtrain.runs.load("runs/other")])  # {"optimizer.lr": [0.003, 0.0003]}

A run can be read while it trains: a half-written last line is left out.
"""

import dataclasses
import json
import math
import os
import sys
from typing import NamedTuple

from jaxtrain import config as config_lib
from jaxtrain import errors
from jaxtrain.errors import UserError, did_you_mean, exit_with
from jaxtrain.rundir import layout
from jaxtrain.rundir import storage

X_AXES = ("step", "epoch", "examples")
# Substrings of the names of metrics where lower is better; for every other metric higher is.
LOWER_IS_BETTER = ("loss", "perplexity", "bits_per_byte", "error")


class Point(NamedTuple):
  step: int
  value: float


def lower_is_better(metric):
  return any(word in metric for word in LOWER_IS_BETTER)


def is_count(metric):
  """Counts an evaluator reports beside its scores (val/num_examples, n): not worth a column."""
  last = metric.rsplit("/", 1)[-1]
  return last.startswith("num_") or last == "n"


def _is_number(value):
  return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclasses.dataclass
class Run:
  """One work directory: `rows` as metrics.jsonl has them, `config` as config.json has it."""
  path: str
  config: dict
  rows: list

  @property
  def name(self):
    return os.path.basename(os.path.normpath(self.path))

  def metrics(self):
    """The names of the numeric metrics in the rows, in the order they first appear."""
    names = {}
    for row in self.rows:
      names.update((k, None) for k, v in row.items() if k != "step" and _is_number(v))
    return list(names)

  def points(self, metric):
    """The metric's values, one per step, sorted by step. Where a step has the metric twice
    (`--mode=eval` on an earlier checkpoint appends), the row written last counts."""
    by_step = {}
    for row in self.rows:
      if _is_number(row.get(metric)):
        by_step[row["step"]] = float(row[metric])
    if not by_step:
      raise UserError(f"{self.path} has no metric '{metric}'{did_you_mean(metric, self.metrics())}; "
                      f"it has: {', '.join(self.metrics()) or 'no metrics yet'}")
    return [Point(step, by_step[step]) for step in sorted(by_step)]

  def series(self, metric, x="step"):
    """(xs, ys) of the metric. x='epoch' is step / steps per epoch (from the train rows'
    train/epoch), so evaluations get epochs too; x='examples' is step * input.batch_size."""
    points = self.points(metric)
    steps = [p.step for p in points]
    if x == "step":
      xs = steps
    elif x == "epoch":
      per_epoch = self.steps_per_epoch()
      xs = [s / per_epoch for s in steps]
    elif x == "examples":
      batch_size = self.batch_size()
      xs = [s * batch_size for s in steps]
    else:
      raise UserError(f"x='{x}': use step, epoch or examples")
    return xs, [p.value for p in points]

  def final(self, metric):
    """The value at the last step that has the metric."""
    return self.points(metric)[-1]

  def best(self, metric):
    """The lowest value for metrics named with loss, perplexity, bits_per_byte or error, the
    highest for others (accuracy...); the first step to reach it. NaNs are left out."""
    points = [p for p in self.points(metric) if not math.isnan(p.value)]
    if not points:
      return self.final(metric)
    sign = 1 if lower_is_better(metric) else -1
    return min(points, key=lambda p: (sign * p.value, p.step))

  def steps_per_epoch(self):
    for row in reversed(self.rows):
      epoch = row.get("train/epoch")
      if _is_number(epoch) and epoch > 0:
        return row["step"] / epoch
    raise UserError(f"{self.path} has no train/epoch in its rows yet, so no epochs: plot against --x=step")

  def batch_size(self):
    section = self.config.get("input")
    value = section.get("batch_size") if isinstance(section, dict) else None
    if not _is_number(value) or value <= 0:
      raise UserError(f"{layout.config_path(self.path)} has no input.batch_size, so no examples: plot against --x=step")
    return value


def load(directory):
  """The run in a work directory: a Run with its metrics rows and config."""
  directory = os.fspath(directory).rstrip("/") if storage.is_gcs(directory) else os.fspath(directory)
  if not storage.isdir(directory):
    what = "is a file" if storage.exists(directory) else "does not exist"
    raise UserError(f"{directory} {what}: give a run's work directory (with config.json and metrics.jsonl)")
  missing = [n for n in (layout.CONFIG, layout.METRICS) if not storage.isfile(os.path.join(directory, n))]
  if missing:
    inside = sorted(d for d in storage.listdir(directory)
                    if storage.isfile(os.path.join(directory, d, layout.METRICS)))
    hint = f"; runs inside it: {', '.join(os.path.join(directory, d) for d in inside[:5])}" if inside else ""
    raise UserError(f"{directory} is not a run's work directory: it has no {' and no '.join(missing)}{hint}")
  return Run(path=directory, config=layout.read_config(directory),
             rows=_read_rows(os.path.join(directory, layout.METRICS)))


def _read_rows(path):
  with storage.open_file(path, "rb") as f:
    lines = f.read().split(b"\n")
  rows = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      if number == len(lines):  # No newline yet: a live run is writing it, or a crash cut it.
        break
      why = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else "not UTF-8"
      raise UserError(f"{path}:{number}: not a JSON line ({why}): {printable(line.strip(), 60)}") from None
    if not isinstance(row, dict) or not _is_number(row.get("step")) or not float(row["step"]).is_integer():
      raise UserError(f"{path}:{number}: a row is a JSON object with an integer \"step\": "
                      f"{printable(line.strip(), 60)}")
    row["step"] = int(row["step"])
    rows.append(row)
  return rows


def printable(text, limit=None):
  """`text` (bytes: as UTF-8) with control characters and bytes that are not UTF-8 escaped
  ('\\x1b'): a garbage line must not reach the terminal raw. Cut after about `limit` characters."""
  if isinstance(text, bytes):
    text = text.decode("utf-8", "backslashreplace")
  shown = ""
  for char in text:
    if limit is not None and len(shown) >= limit:
      break
    shown += char if char.isprintable() else repr(char)[1:-1]
  return shown


def differing_config(runs):
  """{dotted key: [value in each run]} for the config keys whose values are not the same in
  all runs (a key a run lacks reads as None there)."""
  flats = [config_lib.flatten(run.config) for run in runs]
  keys = dict.fromkeys(key for flat in flats for key in flat)
  return {key: [flat.get(key) for flat in flats] for key in keys
          if any(flat.get(key) != flats[0].get(key) for flat in flats[1:])}


def format_value(value):
  """A config value as config.json writes it, strings bare."""
  return value if isinstance(value, str) else json.dumps(value)


def labels(runs):
  """A name per run for legends: the differing config values ('optimizer.lr=0.003'), the
  directory's name where nothing differs, both where that leaves two runs alike."""
  differ = differing_config(runs)
  names = [run.name for run in runs]
  if len(set(names)) < len(names):
    names = [run.path for run in runs]
  values = [", ".join(f"{k}={format_value(v[i])}" for k, v in differ.items()) for i in range(len(runs))]
  if not differ:
    return names
  if len(set(values)) < len(values):
    return [f"{name}: {value}" for name, value in zip(names, values)]
  return values


def metric_names(runs):
  """Every metric of the runs, in the order they first appear."""
  return list(dict.fromkeys(m for run in runs for m in run.metrics()))


def default_metrics(runs):
  """train/loss, then the evaluators' metrics (sorted, so each evaluator's are together)."""
  names = metric_names(runs)
  evals = sorted(m for m in names if not m.startswith("train/") and not is_count(m))
  return (["train/loss"] if "train/loss" in names else []) + evals


def parse_metrics(text, runs):
  """--metrics=a,b: the names, each one that at least one of the runs has."""
  metrics = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
  if not metrics:
    raise UserError("--metrics is empty: name one or more metrics, comma-separated")
  check_metrics(metrics, runs)
  return metrics


def check_metrics(metrics, runs):
  names = metric_names(runs)
  for metric in metrics:
    if metric not in names:
      which = f"{runs[0].path} has no metric" if len(runs) == 1 else "no run has the metric"
      raise UserError(f"{which} '{metric}'{did_you_mean(metric, names)}; metrics: {', '.join(names)}")


def check_has_metrics(runs):
  if not metric_names(runs):
    raise UserError(f"no metrics yet in {', '.join(os.path.join(r.path, 'metrics.jsonl') for r in runs)}")


def _number(value):
  return f"{value:.4g}"


def table(runs, metrics):
  """The markdown table of `python -m jaxtrain.runs`."""
  differ = differing_config(runs)
  header = ["run"] + list(differ)
  for metric in metrics:
    header += [f"{metric} final", f"{metric} best"]
  rows = [header]
  for i, run in enumerate(runs):
    row = [run.path] + [format_value(values[i]) for values in differ.values()]
    for metric in metrics:
      if metric in run.metrics():
        row += [f"{_number(p.value)} @ {p.step}" for p in (run.final(metric), run.best(metric))]
      else:
        row += ["-", "-"]
    rows.append(row)
  rows = [[printable(cell) for cell in row] for row in rows]  # Names and values from the runs' own files.
  widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
  lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
  lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
  return "\n".join(lines)


def main(argv=None):
  parser = errors.ArgumentParser(prog="python -m jaxtrain.runs", allow_abbrev=False,
                          description="Final and best metrics of runs, and the config values that differ.")
  parser.add_argument("runs", nargs="+", metavar="RUN", help="work directories")
  parser.add_argument("--metrics", help="comma-separated (default: train/loss and the evaluators' metrics)")
  args = parser.parse_args(argv)
  try:
    runs = [load(path) for path in args.runs]
    check_has_metrics(runs)
    metrics = default_metrics(runs) if args.metrics is None else parse_metrics(args.metrics, runs)
    text = table(runs, metrics)
  except UserError as e:
    exit_with(printable(str(e)))  # Metric names in it come from the runs' files.
  print(text)
  sys.stdout.flush()


if __name__ == "__main__":
  main()
