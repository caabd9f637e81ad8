"""jaxtrain.sweep on a 2x2 grid (optimizer.lr x seed) of 30-step digits MLP runs: the runs
and their names, the table against each run's metrics.jsonl, a rerun that repeats nothing,
an interrupted sweep that resumes, --parallel, --print_commands and the one-line refusals."""

import contextlib
import fcntl
import hashlib
import importlib.util
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from jaxtrain import sweep

CONFIG = os.path.join(ROOT, "experiments", "digits.py") + ":mlp"
# Checkpoints every 10 steps (all kept), so a run can be cut back to an earlier one.
SHRINK = ("--config.total_steps=30", "--config.log_every_steps=10", "--config.evals.val.every_steps=10",
          "--config.checkpoint.every_steps=10", "--config.checkpoint.keep=5", "--config.schedule.warmup_steps=5",
          "--config.input.batch_size=32", "--config.model.hidden=(32,)")
GRID = ("--sweep=optimizer.lr=1e-3,1e-2", "--sweep=seed=0,1")
VALUES = {"lr_0.001-seed_0": (0.001, 0), "lr_0.001-seed_1": (0.001, 1), "lr_0.01-seed_0": (0.01, 0),
          "lr_0.01-seed_1": (0.01, 1)}
NAMES = list(VALUES)
TIMING = ("train/steps_per_sec", "train/examples_per_sec", "train/eta_seconds", "train/train_seconds")


def argv(workdir, *extra, grid=GRID):
  return [f"--config={CONFIG}", f"--workdir={workdir}", *grid, *SHRINK, *extra]


def run_sweep(args):
  """sweep.main(args) in this process: (exit status, what it printed)."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    try:
      sweep.main(list(args))
      code = 0
    except SystemExit as e:
      code = e.code
  return code, out.getvalue()


def read_rows(run_dir):
  with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def numbers(run_dir):
  """The metric rows less the timing keys, which differ between equal runs."""
  return [{k: v for k, v in row.items() if k not in TIMING} for row in read_rows(run_dir)]


def digest(run_dir):
  """A hash of metrics.jsonl and every checkpoint file."""
  h = hashlib.sha256()
  paths = [os.path.join(run_dir, "metrics.jsonl")]
  for root, _, files in os.walk(os.path.join(run_dir, "checkpoints")):
    paths += [os.path.join(root, name) for name in files]
  for path in sorted(paths):
    with open(path, "rb") as f:
      h.update(path.encode() + f.read())
  return h.hexdigest()


def has_matplotlib():
  return importlib.util.find_spec("matplotlib") is not None


@pytest.fixture(scope="module")
def swept(tfds_dir, tmp_path_factory):
  """The 2x2 sweep, run once: (its directory, what it printed)."""
  workdir = str(tmp_path_factory.mktemp("sweep") / "lr")
  code, out = run_sweep(argv(workdir))
  assert code == 0, out
  return workdir, out


def test_one_run_per_combination_named_by_its_values(swept):
  workdir, out = swept
  expected = NAMES + [f"{name}.log" for name in NAMES] + ["sweep.json", "sweep.md"]
  assert sorted(os.listdir(workdir)) == sorted(expected + (["sweep.png"] if has_matplotlib() else []))
  assert [line.split(":")[0] for line in out.splitlines() if line.endswith(".log)")] == \
      [f"[{i}/4] {name}" for i, name in enumerate(NAMES, 1)]
  for name, (lr, seed) in VALUES.items():
    with open(os.path.join(workdir, name, "config.json"), encoding="utf-8") as f:
      config = json.load(f)
    assert (config["optimizer"]["lr"], config["seed"], config["total_steps"]) == (lr, seed, 30)
    with open(os.path.join(workdir, f"{name}.log"), encoding="utf-8") as f:
      command = shlex.split(f.readline()[2:])
    assert command == ["python", "-m", "jaxtrain.launch", f"--config={CONFIG}", f"--workdir={workdir}/{name}",
                       *SHRINK, f"--config.optimizer.lr={lr}", f"--config.seed={seed}"]
  with open(os.path.join(workdir, "sweep.json"), encoding="utf-8") as f:
    state = json.load(f)
  assert state["grid"] == {"optimizer.lr": [0.001, 0.01], "seed": [0, 1]} and state["overrides"] == list(SHRINK)
  assert {name: run["status"] for name, run in state["runs"].items()} == dict.fromkeys(NAMES, "finished")


def test_table_is_sorted_by_the_metric_and_has_each_runs_numbers(swept):
  workdir, out = swept
  with open(os.path.join(workdir, "sweep.md"), encoding="utf-8") as f:
    text = f.read()
  assert text.startswith("Sorted by val/loss, final value (lower is better).") and text in out
  lines = [line for line in text.splitlines() if line.startswith("| ")]
  header = [cell.strip() for cell in lines[0].strip("|").split("|")]
  assert header == ["run", "optimizer.lr", "seed", "val/loss final", "val/loss best", "train/loss final",
                    "train/loss best"]
  table = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]
  with open(os.path.join(workdir, "sweep.json"), encoding="utf-8") as f:
    results = json.load(f)["results"]
  assert [row[0] for row in table] == [result["run"] for result in results] and sorted(row[0] for row in table) == \
      sorted(NAMES)
  finals = []
  for row, result in zip(table, results):
    rows = read_rows(os.path.join(workdir, row[0]))
    val = [(r["step"], r["val/loss"]) for r in rows if "val/loss" in r]
    train = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
    assert row[1:3] == [str(v) for v in VALUES[row[0]]]
    assert row[3] == f"{val[-1][1]:.4g} @ 30" and row[5] == f"{train[-1][1]:.4g} @ 30"
    best = min(val, key=lambda p: (p[1], p[0]))
    assert row[4] == f"{best[1]:.4g} @ {best[0]}"
    assert result["val/loss"] == {"final": {"step": 30, "value": val[-1][1]}, "best": {"step": best[0], "value": best[1]}}
    assert result["values"] == dict(zip(["optimizer.lr", "seed"], VALUES[row[0]]))
    finals.append(val[-1][1])
  assert finals == sorted(finals)
  if has_matplotlib():
    assert os.path.getsize(os.path.join(workdir, "sweep.png")) > 1000
  else:
    assert "plot skipped: matplotlib is not installed: pip install -e '.[plots]'" in out


def test_running_it_again_repeats_nothing(swept):
  workdir, _ = swept
  before = {name: digest(os.path.join(workdir, name)) for name in NAMES}
  logs = {name: os.path.getsize(os.path.join(workdir, f"{name}.log")) for name in NAMES}
  start = time.perf_counter()
  code, out = run_sweep(argv(workdir))
  assert code == 0 and time.perf_counter() - start < 10, out
  assert [line for line in out.splitlines() if line.startswith("[")] == \
      [f"[{i}/4] {name}: finished before, not run again" for i, name in enumerate(NAMES, 1)]
  assert {name: digest(os.path.join(workdir, name)) for name in NAMES} == before
  assert {name: os.path.getsize(os.path.join(workdir, f"{name}.log")) for name in NAMES} == logs


def test_an_interrupted_sweep_resumes(swept, tmp_path):
  """The state a sweep stopped in its second run leaves: that run's later checkpoints gone
  (its metrics rows past step 10 are the launcher's to drop), the fourth never started."""
  workdir, _ = swept
  copy = str(tmp_path / "lr")
  shutil.copytree(workdir, copy)
  second, fourth = NAMES[1], NAMES[3]
  for step in (20, 30):
    shutil.rmtree(os.path.join(copy, second, "checkpoints", str(step)))
  shutil.rmtree(os.path.join(copy, fourth))
  os.remove(os.path.join(copy, f"{fourth}.log"))
  with open(os.path.join(copy, "sweep.json"), encoding="utf-8") as f:
    state = json.load(f)
  state["runs"] = {name: state["runs"][name] for name in NAMES[:1] + NAMES[2:3]}
  with open(os.path.join(copy, "sweep.json"), "w", encoding="utf-8") as f:
    json.dump(state, f)
  code, out = run_sweep(argv(copy))
  assert code == 0, out
  started = [line.split(":")[0] for line in out.splitlines() if line.endswith(".log)")]
  assert started == ["[2/4] " + second, "[4/4] " + fourth]
  with open(os.path.join(copy, f"{second}.log"), encoding="utf-8") as f:
    assert "Resumed from checkpoint at step 10" in f.read()
  for name in (second, fourth):
    assert numbers(os.path.join(copy, name)) == numbers(os.path.join(workdir, name))
  with open(os.path.join(copy, "sweep.md"), encoding="utf-8") as f, \
       open(os.path.join(workdir, "sweep.md"), encoding="utf-8") as g:
    assert f.read() == g.read()


def test_parallel_runs_give_the_numbers_of_runs_one_at_a_time(swept, tmp_path):
  workdir, _ = swept
  code, out = run_sweep(argv(str(tmp_path / "p"), "--parallel=2", "--config.optimizer.lr=1e-3",
                             grid=["--sweep=seed=0,1"]))
  assert code == 0, out
  events = [line.split(":")[1].split()[0] for line in out.splitlines() if line.startswith("[")]
  assert events == ["started", "started", "finished", "finished"]  # Both at once.
  for seed in (0, 1):
    assert numbers(str(tmp_path / "p" / f"seed_{seed}")) == numbers(os.path.join(workdir, f"lr_0.001-seed_{seed}"))


def test_a_run_that_fails_is_reported_and_the_others_go_on(tfds_dir, tmp_path):
  # A warmup longer than training is refused by the run itself, at start-up.
  code, out = run_sweep(argv(str(tmp_path / "f"), "--config.schedule.warmup_steps=50",
                             grid=["--sweep=schedule.name=cosine,linear"]))
  assert code == 1
  for name in ("name_cosine", "name_linear"):
    line = f"run {name} failed: error: the warmup (50 steps) must be shorter than training (30 steps)"
    assert line in out.splitlines()


def test_print_commands_prints_the_runs_and_writes_nothing(tmp_path, capsys):
  workdir = str(tmp_path / "c")
  sweep.main(argv(workdir, "--print_commands"))
  expected = [shlex.join(["python", "-m", "jaxtrain.launch", f"--config={CONFIG}", f"--workdir={workdir}/{name}",
                          *SHRINK, f"--config.optimizer.lr={lr}", f"--config.seed={seed}"])
              for name, (lr, seed) in VALUES.items()]
  assert capsys.readouterr().out.splitlines() == expected
  sweep.main(argv("rel", "--launcher=python scripts/launch_slurm.py --nodes=2 --gpus_per_node=8 --job_name=s{index}"))
  lines = capsys.readouterr().out.splitlines()
  assert [shlex.split(line)[:6] for line in lines] == [
      ["python", "scripts/launch_slurm.py", "--nodes=2", "--gpus_per_node=8", f"--job_name=s{i}", "--"]
      for i in range(4)]
  assert [shlex.split(line)[7] for line in lines] == [f"--workdir={os.path.abspath('rel')}/{name}" for name in NAMES]
  assert not os.path.exists(workdir) and not os.path.exists("rel")


@pytest.mark.parametrize("args, message", [
    (["--sweep=optimizer.lrr=1e-3,1e-2"],
     "--sweep=optimizer.lrr=1e-3,1e-2: the config has no key 'optimizer.lrr' (did you mean 'optimizer.lr'?)"),
    (["--sweep=optimizer.lr=1e-3,fast"],
     "--sweep=optimizer.lr=1e-3,fast: 'fast' is not of type float, the type of 'optimizer.lr' in the config"),
    (["--sweep=seed=0,1.5"], "--sweep=seed=0,1.5: '1.5' is not of type int, the type of 'seed' in the config"),
    (["--sweep=seed=0,1,0"], "--sweep=seed=0,1,0: 0 and 0 are the same value: give each once"),
    (["--sweep=seed=0,,1"], "--sweep=seed=0,,1: an empty value in the list; separate values with ',' (or ';' alone)"),
    (["--sweep=seed=0,1,"], "--sweep=seed=0,1,: an empty value in the list; separate values with ',' (or ';' alone)"),
    (["--sweep=model.hidden=(8,),(16,),"], "--sweep=model.hidden=(8,),(16,),: an empty value in the list; separate "
     "values with ',' (or ';' alone)"),
    (["--sweep=seed"], "--sweep=seed: write KEY=V1,V2,... (e.g. --sweep=optimizer.lr=1e-4,3e-4)"),
    (["--sweep=optimizer=1"], "--sweep=optimizer=1: 'optimizer' is a section: give one of optimizer.grad_clip_norm, "
     "optimizer.lr, optimizer.name, optimizer.weight_decay"),
    (["--sweep=seed=0,1", "--sweep=seed=2"], "--sweep=seed=2: 'seed' is already swept"),
    (["--sweep=seed=0,1", "--config.seed=3"], "--sweep=seed=0,1: 'seed' is already set by --config.seed"),
    (["--sweep=seed=0,1", "--config.optimizer.lrr=1"],
     "--config.optimizer.lrr=1: the config has no key 'optimizer.lrr' (did you mean 'optimizer.lr'?)"),
    (["--sweep=seed=0,1", "--mode=eval"],
     "unknown argument --mode=eval: give --config.a.b=VALUE overrides for every run, or sweep options"),
    (["--sweep=seed=0,1", "--metric=vall/loss"],
     "--metric=vall/loss: give EVALUATOR/NAME, the evaluator one of train, val (did you mean 'val'?)"),
    (["--sweep=seed=0,1", "--parallel=0"], "--parallel=0: give 1 or more runs at a time"),
    (["--sweep=seed=0,1", "--out=plot.jpg"], "--out=plot.jpg: give a file name ending in .png"),
    ([], "the following arguments are required: --sweep"),
])
def test_mistakes_are_one_line_and_write_nothing(args, message, tmp_path, capsys):
  workdir = str(tmp_path / "x")
  with pytest.raises(SystemExit) as exit_info:
    sweep.main([f"--config={CONFIG}", f"--workdir={workdir}", *args])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == f"error: {message}\n"
  assert not os.path.exists(workdir)


def test_a_bucket_as_the_sweeps_directory_is_one_line(capsys):
  with pytest.raises(SystemExit) as exit_info:
    sweep.main([f"--config={CONFIG}", "--workdir=gs://b/sweep", "--sweep=seed=0,1"])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == ("error: --workdir=gs://b/sweep: a sweep's directory must be on a disk (its logs "
                                     "and table are files there); give a local or shared path\n")


def test_a_sweep_directory_that_cannot_be_made_is_one_line_before_any_run(capsys):
  """Even root cannot make directories in /proc: refused before a run starts (none is reported)."""
  with pytest.raises(SystemExit) as exit_info:
    sweep.main(argv("/proc/jaxtrain/sweep", grid=["--sweep=seed=0,1"]))
  assert exit_info.value.code == 2
  out, err = capsys.readouterr()
  assert out == "" and err == ("error: --workdir=/proc/jaxtrain/sweep: cannot write the sweep's directory (No such "
                               "file or directory: /proc/jaxtrain); give a writable directory\n")


# Root writes a read-only directory unless it drops the capability that lets it.
AS_NON_ROOT = ["setpriv", "--bounding-set=-dac_override", "--inh-caps=-dac_override"] if os.geteuid() == 0 else []


@pytest.mark.skipif(AS_NON_ROOT and not shutil.which("setpriv"), reason="root, and no setpriv to drop its rights")
def test_a_read_only_sweep_directory_is_one_line_before_the_report(tmp_path):
  """--report_only reads the runs, then writes sweep.md and sweep.json: refused before it reads."""
  workdir = tmp_path / "ro"
  workdir.mkdir()
  workdir.chmod(0o555)
  try:
    result = subprocess.run([*AS_NON_ROOT, sys.executable, "-m", "jaxtrain.sweep", *argv(str(workdir), "--report_only",
                            grid=["--sweep=seed=0,1"])], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            check=False)
  finally:
    workdir.chmod(0o755)
  assert (result.returncode, result.stdout, result.stderr) == (2, "", (
      f"error: --workdir={workdir}: cannot write the sweep's directory (Permission denied: "
      f"{workdir}/sweep.json.partial); give a writable directory\n"))
  assert os.listdir(workdir) == []


def test_another_grid_in_the_same_directory_is_refused(swept, tmp_path, capsys):
  workdir, _ = swept
  before = sorted(os.listdir(workdir)), open(os.path.join(workdir, "sweep.json"), "rb").read()
  with pytest.raises(SystemExit) as exit_info:
    sweep.main(argv(workdir, grid=["--sweep=optimizer.lr=1e-3,3e-3", "--sweep=seed=0,1"]))
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == (
      f"error: {workdir}/sweep.json holds another sweep (grid {{\"optimizer.lr\": [0.001, 0.01], \"seed\": [0, 1]}}, "
      "here {\"optimizer.lr\": [0.001, 0.003], \"seed\": [0, 1]}): give another --workdir, or the same flags to "
      "resume it\n")
  assert (sorted(os.listdir(workdir)), open(os.path.join(workdir, "sweep.json"), "rb").read()) == before
  (tmp_path / "mine.txt").write_text("x")
  with pytest.raises(SystemExit):
    sweep.main(argv(str(tmp_path)))
  assert capsys.readouterr().err == f"error: --workdir={tmp_path} holds files of no sweep (mine.txt): give a new " \
      "or empty directory\n"


def test_values_and_names():
  assert sweep.split_values("1e-4, 3e-4") == ["1e-4", "3e-4"]
  assert sweep.split_values("(8,16),(16, 32)") == ["(8,16)", "(16, 32)"]
  assert sweep.split_values("value_range(-1, 1)|keep('a'),x") == ["value_range(-1, 1)|keep('a')", "x"]
  assert sweep.split_values("a b,c/d") == ["a b", "c/d"]  # Not Python: split at every comma.
  assert sweep.split_values("x,y;z") == ["x,y", "z"]
  assert sweep.grid_runs({"model.features": [(8, 16)], "model.conv": ["im2col", "a/b"]}) == [
      ("features_8_16-conv_im2col", {"model.features": (8, 16), "model.conv": "im2col"}),
      ("features_8_16-conv_a_b", {"model.features": (8, 16), "model.conv": "a/b"})]
  # Keys that end alike are named in full; values alike once made safe get a hash each.
  names = [name for name, _ in sweep.grid_runs({"a.dropout": [0.1], "b.dropout": ["a b", "a_b"]})]
  assert names[0].startswith("a.dropout_0.1-b.dropout_a_b-") and names[1].startswith("a.dropout_0.1-b.dropout_a_b-")
  assert len(set(names)) == 2


@pytest.mark.slow
def test_a_killed_sweep_resumes(swept, tmp_path):
  """SIGKILL to the sweep once its first run finished: the second run gets SIGTERM (it dies
  with the sweep); the same command then skips the first and finishes the second."""
  workdir, _ = swept
  command = [sys.executable, "-m", "jaxtrain.sweep", *argv(str(tmp_path / "k"), "--config.optimizer.lr=1e-3",
                                                           grid=["--sweep=seed=0,1"])]
  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
  for line in process.stdout:
    if line.startswith("[2/2] seed_1: started"):
      break
  time.sleep(1.0)  # The second run is starting up.
  process.kill()
  process.wait()
  lock_path, deadline = tmp_path / "k" / "seed_1" / ".lock", time.time() + 30
  while lock_path.exists() and time.time() < deadline:  # The run holds its lock while it lives.
    with open(lock_path, encoding="utf-8") as lock:
      try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
      except BlockingIOError:
        time.sleep(0.2)
  result = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=False)
  assert result.returncode == 0, result.stdout
  assert "[1/2] seed_0: finished before, not run again" in result.stdout
  assert "[2/2] seed_1: finished" in result.stdout
  with open(tmp_path / "k" / "seed_1.log", encoding="utf-8") as f:
    assert sum(line.startswith("$ python -m jaxtrain.launch") for line in f) == 2  # Started, stopped, started.
  for seed in (0, 1):
    assert numbers(str(tmp_path / "k" / f"seed_{seed}")) == numbers(os.path.join(workdir, f"lr_0.001-seed_{seed}"))
