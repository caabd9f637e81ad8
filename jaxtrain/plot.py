"""Curves of runs side by side, as a PNG (matplotlib: pip install -e '.[plots]').

    python -m jaxtrain.plot RUN [RUN ...] [--metrics=train/loss,val/accuracy] \\
        [--x=step|epoch|examples] [--smooth=0.6] --out=FILE.png

One panel per metric, one colour per run, and one legend naming each run by the config
values that differ between the runs ('optimizer.lr=0.003'), or by its directory's name
where nothing differs. The default metrics are train/loss and the first evaluator's
metrics (less counts such as val/num_examples).

Training metrics (train/...) are averages over a log interval, drawn as lines smoothed as
TensorBoard smooths (--smooth: the weight of its debiased exponential moving average),
with the raw values faint behind. Evaluations are few and each one counts, so they are
drawn raw, as points joined by lines, as train metrics are with --smooth=0. A lower-is-better metric
(loss...) whose values span more than a factor of 30 gets a log scale. The PNG is written
whole and then renamed into place. In a notebook:

    import jaxtrain.plot
    jaxtrain.plot.figure(["runs/a", "runs/b"], ["train/loss", "val/accuracy"], x="epoch")
"""

import dataclasses
import math
import os
import sys

from jaxtrain import errors
from jaxtrain.errors import UserError, exit_with
from jaxtrain import runs as runs_lib

NO_MATPLOTLIB = "matplotlib is not installed: pip install -e '.[plots]'"
PANEL_SIZE = (4.6, 3.4)  # Inches, at 100 dots per inch.
DPI = 100
MAX_COLUMNS = 3


@dataclasses.dataclass
class Curve:
  """One run's line in one panel: `ys` as logged; `smoothed` what the solid line shows,
  None where the values are drawn raw (evaluations, --smooth=0)."""
  label: str
  color: str
  xs: list
  ys: list
  smoothed: list | None


def smooth(values, weight):
  """TensorBoard's smoothing: an exponential moving average with the weight `weight` on the
  past, debiased (divided by 1 - weight**n) so the first points are not pulled to 0.
  Non-finite values are kept as they are and left out of the average."""
  out, average, count = [], 0.0, 0
  for value in values:
    if not math.isfinite(value):
      out.append(value)
      continue
    average = average * weight + (1 - weight) * value
    count += 1
    out.append(average / (1 - weight**count))
  return out


def default_metrics(runs):
  """train/loss, then the metrics of the first evaluator found in the rows."""
  names = runs_lib.metric_names(runs)
  evals = [m for m in names if not m.startswith("train/") and not runs_lib.is_count(m)]
  first = [m for m in evals if m.split("/")[0] == evals[0].split("/")[0]] if evals else []
  return (["train/loss"] if "train/loss" in names else []) + sorted(first)


def curves(runs, metrics, x="step", smooth_weight=0.6):
  """{metric: [Curve per run that has the metric]}: the data `figure` draws."""
  check_options(x, smooth_weight)
  labels = runs_lib.labels(runs)
  panels = {}
  for metric in metrics:
    panels[metric] = []
    for i, run in enumerate(runs):
      if metric not in run.metrics():
        continue
      xs, ys = run.series(metric, x)
      smoothed = smooth(ys, smooth_weight) if metric.startswith("train/") and smooth_weight > 0 else None
      panels[metric].append(Curve(labels[i], f"C{i % 10}", xs, ys, smoothed))
  return panels


def check_options(x, smooth_weight):
  if x not in runs_lib.X_AXES:
    raise UserError(f"--x={x}: use step, epoch or examples")
  if not 0 <= smooth_weight < 1:  # NaN fails too.
    raise UserError(f"--smooth={smooth_weight}: give a weight in [0, 1) (0: no smoothing; TensorBoard's default 0.6)")


def _matplotlib():
  try:
    # Imports the package itself first, so a matplotlib hidden in sys.modules counts as missing.
    from matplotlib import figure as figure_lib, lines  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError(NO_MATPLOTLIB) from None
  return figure_lib.Figure, lines.Line2D


def figure(runs, metrics=None, x="step", smooth_weight=0.6):
  """A matplotlib Figure of the runs (Run objects or work directories). It is built without
  pyplot, so it neither changes the backend nor stays open; notebooks display it."""
  Figure, Line2D = _matplotlib()
  runs = [run if isinstance(run, runs_lib.Run) else runs_lib.load(run) for run in runs]
  runs_lib.check_has_metrics(runs)
  metrics = default_metrics(runs) if metrics is None else list(metrics)
  if not metrics:
    raise UserError("nothing to plot: the runs have no train/loss or evaluations; name --metrics")
  runs_lib.check_metrics(metrics, runs)
  panels = curves(runs, metrics, x, smooth_weight)
  columns = min(len(panels), MAX_COLUMNS)
  rows = math.ceil(len(panels) / columns)
  fig = Figure(figsize=(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * rows + 0.4), dpi=DPI, layout="constrained")
  axes = fig.subplots(rows, columns, squeeze=False).ravel()
  for ax, (metric, lines) in zip(axes, panels.items()):
    for curve in lines:
      if curve.smoothed is None:
        ax.plot(curve.xs, curve.ys, "o-", color=curve.color, markersize=3.5, linewidth=1.2)
      else:
        ax.plot(curve.xs, curve.ys, color=curve.color, alpha=0.25, linewidth=1)
        ax.plot(curve.xs, curve.smoothed, color=curve.color, linewidth=1.6, marker="o" if len(curve.xs) == 1 else None)
    smoothed = any(curve.smoothed is not None for curve in lines)
    ax.set_title(f"{metric} (smoothed {smooth_weight:g})" if smoothed else metric, fontsize=10)
    ax.set_xlabel(x)
    ax.grid(alpha=0.3)
    values = [v for curve in lines for v in curve.ys if math.isfinite(v)]
    if runs_lib.lower_is_better(metric) and values and min(values) > 0 and max(values) / min(values) > 30:
      ax.set_yscale("log")
  for ax in axes[len(panels):]:
    ax.remove()
  labels = runs_lib.labels(runs)
  handles = [Line2D([], [], color=f"C{i % 10}", linewidth=1.6) for i in range(len(runs))]
  # As many legend columns as fit the figure's width: ~0.075 in per character at 9 pt, plus the line.
  per_label = 0.075 * max(map(len, labels)) + 0.7
  legend_columns = max(1, min(len(runs), int(fig.get_figwidth() / per_label)))
  fig.legend(handles, labels, loc="outside lower center", ncols=legend_columns, fontsize=9, frameon=False)
  return fig


def save(fig, path):
  """Writes the PNG whole, then renames it into place: a reader never sees half a file."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  partial = f"{path}.partial"
  try:
    fig.savefig(partial, format="png", dpi=DPI)
    os.replace(partial, path)
  finally:
    if os.path.exists(partial):
      os.remove(partial)


def check_out(path):
  """--out: a .png file whose directory can be made. Checked before anything is drawn."""
  if not path.lower().endswith(".png"):
    raise UserError(f"--out={path}: give a file name ending in .png")
  if os.path.isdir(path):
    raise UserError(f"--out={path} is a directory: give a .png file")
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise UserError(f"--out={path}: {parent} is a file, not a directory")


def main(argv=None):
  parser = errors.ArgumentParser(prog="python -m jaxtrain.plot", allow_abbrev=False,
                                   description="Curves of runs, one panel per metric, as a PNG.")
  parser.add_argument("runs", nargs="+", metavar="RUN", help="work directories")
  parser.add_argument("--metrics", help="comma-separated (default: train/loss and the first evaluator's metrics)")
  parser.add_argument("--x", default="step", help="step, epoch or examples (default: step)")
  parser.add_argument("--smooth", default=0.6, type=float, help="TensorBoard's smoothing of train curves, in [0, 1)")
  parser.add_argument("--out", required=True, help="the PNG to write")
  args = parser.parse_args(argv)
  try:
    check_options(args.x, args.smooth)
    check_out(args.out)
    runs = [runs_lib.load(path) for path in args.runs]
    runs_lib.check_has_metrics(runs)
    metrics = default_metrics(runs) if args.metrics is None else runs_lib.parse_metrics(args.metrics, runs)
    curves(runs, metrics, args.x, args.smooth)  # The data's mistakes first, whether or not matplotlib is there.
    fig = figure(runs, metrics, args.x, args.smooth)
  except UserError as e:
    exit_with(e)
  try:
    save(fig, args.out)
  except OSError as e:
    exit_with(f"cannot write {args.out}: {e.strerror or e}")
  print(f"wrote {args.out}: {', '.join(metrics)} of {len(runs)} run{'s' * (len(runs) > 1)} against {args.x}")
  sys.stdout.flush()


if __name__ == "__main__":
  main()
