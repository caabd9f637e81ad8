"""A grid of runs of one experiment: run, resumed, compared.

    python -m jaxtrain.sweep --config=experiments/digits.py --workdir=runs/lr \\
        --sweep='optimizer.lr=3e-4,1e-3,3e-3' [--sweep='seed=0,1'] [--parallel=N] \\
        [--metric=val/accuracy] [--out=FILE.png] [--config.a.b=V ...]

Each combination of values is one run, `python -m jaxtrain.launch ... --workdir=DIR/NAME`
(NAME from the values: `lr_0.0003-seed_0`), its output appended to DIR/NAME.log.
DIR/sweep.json keeps the definition and each run's outcome: the same command again skips
the runs whose launch exited 0 and starts the others again, which resume from their newest
checkpoint. At the end, the table best first by --metric goes to DIR/sweep.md and the plot
to --out. docs/tools.md, "Sweeps", says the rest.
"""

import ast
import copy
import ctypes
import dataclasses
import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time

from jaxtrain import config as config_lib
from jaxtrain import errors
from jaxtrain.errors import UserError, did_you_mean, exit_with, first_line
from jaxtrain import plot as plot_lib
from jaxtrain.rundir import layout
from jaxtrain.rundir import storage
from jaxtrain import runs as runs_lib


def split_values(text):
  """'1e-4,3e-4' -> ['1e-4', '3e-4']. Commas inside brackets or quotes do not split (read as
  a Python list display where the text is one); with a ';' in the text only ';' splits."""
  if ";" in text:
    return [part.strip() for part in text.split(";")]
  try:
    values = [ast.get_source_segment(f"[{text}]", e) for e in ast.parse(f"[{text}]", mode="eval").body.elts]
  except SyntaxError:
    return [part.strip() for part in text.split(",")]
  return values + [""] if text.rstrip().endswith(",") else values  # Python drops a trailing comma; '0,1,' is a slip.


def load_config(spec):
  """The ConfigDict of --config=path.py[:arg], loaded as the launcher loads it."""
  path, colon, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise UserError(f"--config={path}: no such file")
  try:
    module_spec = importlib.util.spec_from_file_location("jaxtrain_sweep_experiment", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if colon else module.get_config()
  except Exception as e:  # pylint: disable=broad-except  (the user's file raised)
    raise UserError(f"--config={spec}: loading it raised {type(e).__name__}: {first_line(e)}") from None


def coerce(config, key, text, flag):
  """The value `text` gives the config's `key`, of the key's type (checked by assigning it
  to a copy, as the launcher's override would)."""
  *sections, last = key.split(".")
  section = config
  for part in sections:
    section = section.get(part) if hasattr(section, "keys") else None
  if not hasattr(section, "keys") or last not in section.keys():
    known = config_lib.flatten(config.to_dict())
    raise UserError(f"{flag}: the config has no key '{key}'{did_you_mean(key, known)}")
  if hasattr(section[last], "keys"):
    keys = config_lib.flatten(section[last].to_dict(), key + ".")
    raise UserError(f"{flag}: '{key}' is a section: give one of {', '.join(keys)}")
  kind = section.get_type(last)
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
    value = text
  value = text if kind is str and not isinstance(value, str) else value
  trial = copy.deepcopy(section)
  try:
    if isinstance(value, bool) and kind not in (bool, type(None)):
      raise TypeError
    trial[last] = value
  except TypeError:
    raise UserError(f"{flag}: {text!r} is not of type {kind.__name__}, the type of '{key}' in the config") from None
  return trial[last]


def grid_runs(grid):
  """[(name, {key: value})] for every combination, the last key varying fastest."""
  def safe(value):
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", value if isinstance(value, str) else repr(value)).strip("_") or "_"

  lasts = [key.rsplit(".", 1)[-1] for key in grid]
  labels = [key if lasts.count(last) > 1 else last for key, last in zip(grid, lasts)]
  combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
  names = ["-".join(f"{label}_{safe(v)}" for label, v in zip(labels, combo.values())) for combo in combos]
  clash = {name for name in names if names.count(name) > 1}
  for i, name in enumerate(names):  # Values alike once made safe for file names, or too long for one.
    if name in clash or len(name) > 200:
      names[i] = f"{name[:190]}-{hashlib.sha1(repr(list(combos[i].values())).encode()).hexdigest()[:8]}"
  return list(zip(names, combos))


def launch_args(args, workdir, values):
  """The launcher's flags; values other than strings as literals, which it parses back."""
  return [f"--config={args.config}", f"--workdir={workdir}", *args.overrides,
          *(f"--config.{k}={v if isinstance(v, str) else repr(v)}" for k, v in values.items())]


def prepare(args, extra):
  """Checks everything; returns (sweep.json's state, [(name, values)])."""
  config = load_config(args.config)
  args.overrides, keys, grid = extra, [], {}
  for arg in extra:
    match = re.fullmatch(r"--config\.([\w.]+)=(.*)", arg, re.DOTALL)
    if not match:
      raise UserError(f"unknown argument {arg}: give --config.a.b=VALUE overrides for every run, or sweep options")
    coerce(config, match[1], match[2], arg)
    keys.append(match[1])
  for text in args.sweep:
    key, equals, values = text.partition("=")
    flag = f"--sweep={text}"
    if not key or not equals:
      raise UserError(f"{flag}: write KEY=V1,V2,... (e.g. --sweep=optimizer.lr=1e-4,3e-4)")
    if key in grid or key in keys:
      raise UserError(f"{flag}: '{key}' is already {'swept' if key in grid else 'set by --config.' + key}")
    texts = split_values(values)
    if not texts or "" in texts:
      raise UserError(f"{flag}: an empty value in the list; separate values with ',' (or ';' alone)")
    grid[key] = [coerce(config, key, t, flag) for t in texts]
    twice = [t for t, v in zip(texts, grid[key]) if grid[key].count(v) > 1]
    if twice:
      raise UserError(f"{flag}: {' and '.join(twice)} are the same value: give each once")
  if args.parallel < 1:
    raise UserError(f"--parallel={args.parallel}: give 1 or more runs at a time")
  evaluators = ["train"] + list(config.get("evals", {}).keys())
  if args.metric is not None and ("/" not in args.metric or args.metric.split("/")[0] not in evaluators):
    raise UserError(f"--metric={args.metric}: give EVALUATOR/NAME, the evaluator one of {', '.join(evaluators)}"
                    f"{did_you_mean(args.metric.split('/')[0], evaluators)}")
  args.out = args.out or os.path.join(args.workdir, "sweep.png")
  plot_lib.check_options("step", args.smooth)
  plot_lib.check_out(args.out)
  runs = grid_runs(grid)
  definition = {"config": args.config, "grid": json.loads(json.dumps(grid)), "overrides": extra}  # Tuples as lists.
  return _check_workdir(args.workdir, definition, [name for name, _ in runs]), runs


def _check_workdir(directory, definition, names):
  path = os.path.join(directory, "sweep.json")
  if storage.is_gcs(directory):  # Its table, plot and run logs are local files; the runs could be on gs://.
    raise UserError(f"--workdir={directory}: a sweep's directory must be on a disk (its logs and table are "
                    f"files there); give a local or shared path")
  if os.path.exists(directory) and not os.path.isdir(directory):
    raise UserError(f"--workdir={directory} is a file: give a directory for the sweep")
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      state = json.load(f)
    for field in ("config", "grid", "overrides"):
      old, new = state[field], definition[field]
      if field == "config":  # The same file given from another directory is the same.
        old, new = [os.path.realpath(p) + colon + arg for p, colon, arg in (old.partition(":"), new.partition(":"))]
      if old != new:
        raise UserError(f"{path} holds another sweep ({field} {json.dumps(state[field])}, here "
                        f"{json.dumps(definition[field])}): give another --workdir, or the same flags to resume it")
    return state
  ours = set(names) | {f"{name}.log" for name in names} | {"sweep.json", "sweep.json.partial", "sweep.md", "sweep.png"}
  others = sorted(set(os.listdir(directory)) - ours) if os.path.isdir(directory) else []
  if others:
    raise UserError(f"--workdir={directory} holds files of no sweep ({', '.join(others[:3])}"
                    f"{', ...' if len(others) > 3 else ''}): give a new or empty directory")
  return dict(definition, runs={})


def check_writable(directory, create=True):
  """Before any run: the sweep's directory made (with `create`) and a file written in it.
  A real write, as os.access says yes to root where the file system says no (/proc)."""
  if not create and not os.path.isdir(directory):
    return  # --report_only writes nothing where there is no run.
  probe = os.path.join(directory, "sweep.json.partial")  # A name of ours (a killed _save leaves it too).
  try:
    os.makedirs(directory, exist_ok=True)
    with open(probe, "w", encoding="utf-8"):
      pass
    os.remove(probe)
  except OSError as e:
    where = f": {e.filename}" if e.filename else ""
    raise UserError(f"--workdir={directory}: cannot write the sweep's directory ({e.strerror or e}{where}); give a "
                    f"writable directory") from None


def _save(directory, state):
  path = os.path.join(directory, "sweep.json")
  with open(path + ".partial", "w", encoding="utf-8") as f:
    json.dump(state, f, indent=1)
  os.replace(path + ".partial", path)  # A killed sweep never leaves half a file.


def _die_with_parent():  # In a run: SIGTERM (it saves, exits) when the sweep dies, even by SIGKILL.
  try:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG; Linux only.
  except (OSError, AttributeError):
    pass


def run_all(args, state, runs):
  """Runs the runs not finished before, args.parallel at a time, recording each outcome."""
  todo = []
  for index, (name, values) in enumerate(runs, 1):
    workdir = os.path.join(args.workdir, name)
    done = state["runs"].get(name, {}).get("status") == "finished"
    if done and os.path.isfile(os.path.join(workdir, layout.METRICS)):
      print(f"[{index}/{len(runs)}] {name}: finished before, not run again", flush=True)
    else:
      todo.append((index, name, ["python", "-m", "jaxtrain.launch", *launch_args(args, workdir, values)]))
  os.makedirs(args.workdir, exist_ok=True)
  _save(args.workdir, state)
  active, stopped = [], []
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append(signum))
  try:
    while (todo or active) and not stopped:
      while todo and len(active) < args.parallel:
        index, name, command = todo.pop(0)
        log_path = os.path.join(args.workdir, f"{name}.log")
        with open(log_path, "a", encoding="utf-8") as log:
          print(f"$ {shlex.join(command)}", file=log, flush=True)
          # A session of its own: Ctrl-C reaches the sweep alone, which stops the runs with SIGTERM.
          process = subprocess.Popen([sys.executable, *command[1:]], stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=_die_with_parent)
          active.append((index, name, process, log_path, log.tell(), time.perf_counter()))
        print(f"[{index}/{len(runs)}] {name}: started (log: {log_path})", flush=True)
      time.sleep(0.1)
      for item in [item for item in active if item[2].poll() is not None]:
        active.remove(item)
        _record(state, len(runs), *item)
        _save(args.workdir, state)
  except KeyboardInterrupt:
    stopped.append(signal.SIGINT)
  finally:
    signal.signal(signal.SIGTERM, previous)
    for item in active:  # Only when stopped: each run saves a checkpoint and exits 143.
      item[2].send_signal(signal.SIGTERM)
    for item in active:
      item[2].wait()
      _record(state, len(runs), *item)
    _save(args.workdir, state)
  if stopped:
    print(f"stopped by {signal.Signals(stopped[0]).name}: run the same command to resume the sweep", flush=True)
    sys.exit(128 + stopped[0])


def _record(state, count, index, name, process, log_path, offset, start):
  seconds, status = time.perf_counter() - start, process.returncode
  error = None
  if status:  # The run's own one-line error, else its last line.
    with open(log_path, encoding="utf-8", errors="replace") as f:
      f.seek(offset)
      # Less absl's prefix ('W1124 16:56:23.606 1402 launch.py:119] ').
      lines = [re.sub(r"^[IWEF]\d{4} \S+ +\d+ \S+\] ", "", line) for line in map(str.strip, f) if line]
    errors = [line for line in lines if line.startswith("error:")]
    error = errors[-1] if errors else f"exit status {status}" + (f": {lines[-1][:200]}" if lines else "")
  outcome = "finished" if status == 0 else "stopped" if status == 143 else "failed"
  state["runs"][name] = {"status": outcome, "seconds": round(seconds, 1), "error": error}
  print(f"[{index}/{count}] {name}: {outcome}{f': {error}' if error else ''} ({seconds:.1f} s)", flush=True)


def default_metric(runs):
  """The first evaluator's loss, else its accuracy, else train/loss."""
  names = runs_lib.metric_names(runs)
  evals = [m for m in names if not m.startswith("train/") and not runs_lib.is_count(m)]
  first = evals[0].split("/")[0] if evals else None
  return next((m for m in (f"{first}/loss", f"{first}/accuracy") if first and m in names), "train/loss")


def _rank(run, metric):  # Best first by the final value; runs without it (or NaN) last, in grid order.
  value = run.final(metric).value if metric in run.metrics() else math.nan
  return (1, 0.0) if math.isnan(value) else (0, value if runs_lib.lower_is_better(metric) else -value)


def report(args, state, runs):
  """Prints and writes (sweep.md, sweep.json) the table, plots; returns the failed runs' lines."""
  loaded = {}
  for name, _ in runs:
    try:
      run = runs_lib.load(os.path.join(args.workdir, name))
    except UserError:
      continue  # Not started, or failed at start-up: reported below.
    if run.metrics():
      loaded[name] = dataclasses.replace(run, path=name)
  failed = [f"run {name} {info['status']}: {info['error']}" for name, info in state["runs"].items()
            if info["status"] != "finished"]
  if not loaded:
    print("no run has metrics yet" + "".join(f"\n{line}" for line in failed), flush=True)
    return failed
  metric = args.metric or default_metric(list(loaded.values()))
  runs_lib.check_metrics([metric], list(loaded.values()))
  metrics = list(dict.fromkeys([metric, "train/loss"]))
  ranked = sorted(loaded.values(), key=lambda run: _rank(run, metric))
  way = "lower" if runs_lib.lower_is_better(metric) else "higher"
  text = f"Sorted by {metric}, final value ({way} is better).\n\n{runs_lib.table(ranked, metrics)}\n"
  print(text + "".join(f"{line}\n" for line in failed), end="", flush=True)
  with open(os.path.join(args.workdir, "sweep.md"), "w", encoding="utf-8") as f:
    f.write(text + "".join(f"\n{line}\n" for line in failed))
  state["metric"] = metric
  state["results"] = [{"run": run.path, "values": dict(runs)[run.path],
                       **{m: {"final": run.final(m)._asdict(), "best": run.best(m)._asdict()}
                          for m in metrics if m in run.metrics()}} for run in ranked]
  _save(args.workdir, state)
  try:
    drawn = [m for m in metrics if any(m in run.metrics() for run in ranked)]
    fig = plot_lib.figure(list(loaded.values()), drawn, smooth_weight=args.smooth)
    plot_lib.save(fig, args.out)
    print(f"wrote {args.out}: {', '.join(drawn)} of {len(loaded)} runs", flush=True)
  except UserError as e:  # No matplotlib.
    print(f"plot skipped: {e}", flush=True)
  except OSError as e:
    print(f"plot skipped: cannot write {args.out}: {e.strerror or e}", flush=True)
  return failed


def print_commands(args, runs):
  """Each run's command; with --launcher, its arguments after that command's `--`."""
  for index, (name, values) in enumerate(runs):
    workdir = os.path.join(args.workdir, name)
    if not args.launcher:
      print(shlex.join(["python", "-m", "jaxtrain.launch", *launch_args(args, workdir, values)]))
      continue
    try:  # The cluster's hosts run elsewhere: an absolute --workdir.
      prefix = shlex.split(args.launcher.replace("{name}", name).replace("{index}", str(index)))
    except ValueError as e:
      raise UserError(f"--launcher={args.launcher}: {e}") from None
    print(shlex.join(prefix + ["--"] + launch_args(args, os.path.abspath(workdir), values)))


def main(argv=None):
  parser = errors.ArgumentParser(prog="python -m jaxtrain.sweep", allow_abbrev=False,
                                 description="A grid of runs of one experiment, then a table and a plot.",
                                 epilog="Further --config.a.b=VALUE arguments go to every run.")
  parser.add_argument("--config", required=True, help="the experiment: path/to/experiment.py[:arg]")
  parser.add_argument("--workdir", required=True, help="the sweep's directory; each run in DIR/NAME")
  parser.add_argument("--sweep", action="append", required=True, help="KEY=V1,V2,...: a key and its values (repeat)")
  parser.add_argument("--parallel", type=int, default=1, help="runs at a time, sharing this machine (default 1)")
  parser.add_argument("--metric", help="to sort by (default: the first evaluator's loss, else its accuracy)")
  parser.add_argument("--out", help="the plot (default DIR/sweep.png)")
  parser.add_argument("--smooth", type=float, default=0.6, help="smoothing of the plot's train curves, in [0, 1)")
  parser.add_argument("--print_commands", action="store_true", help="print each run's command; run and write nothing")
  parser.add_argument("--launcher", help="print each run's arguments after this command's `--` ({name}, {index})")
  parser.add_argument("--report_only", action="store_true", help="the table and plot of the runs as they are now")
  args, extra = parser.parse_known_args(argv)
  try:
    state, runs = prepare(args, extra)
    if args.print_commands or args.launcher:
      return print_commands(args, runs)
    check_writable(args.workdir, create=not args.report_only)
    if not args.report_only:
      run_all(args, state, runs)
    failed = report(args, state, runs)
  except UserError as e:
    exit_with(e)
  if failed:
    sys.exit(1)


if __name__ == "__main__":
  main()
