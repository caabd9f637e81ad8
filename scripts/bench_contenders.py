"""What the speed benchmarks share: contenders in processes of their own, taking turns.

scripts/bench_lm.py (a Llama LM: training and sampling) and scripts/bench_digits.py (the
digits CNN) import this file: it runs each contender in a worker process, interleaves
their rounds and gives medians and ratios, watches how much CPU other processes take,
prints the machine, the library versions and its float32 matmul peak, and breaks a
compiled step's time down by kind of op from XLA's trace.

Every contender runs in a process of its own: XLA flags must be set before JAX starts,
and PyTorch's threads slowed the JAX step that ran after them in the same process (by
4-20% at 50M). A worker is this file, started by start_workers as

    python scripts/bench_contenders.py --_worker='{"module": "bench_lm", ...}'

which imports the named script (a file beside this one) and builds the contender that its
`contender(spec)` returns; run it through bench_lm.py or bench_digits.py, not by hand.
"""

import argparse
import datetime
import importlib
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTLE_S = 0.2  # Pause between contenders: lets the last one's spinning OpenMP/Eigen threads sleep.


def on_off(text):
  if text.lower() not in ("1", "0", "true", "false", "on", "off", "yes", "no"):
    raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")
  return text.lower() in ("1", "true", "on", "yes")


def parser_for(doc, quick):
  """An argument parser described by a script's docstring, with its --quick (`quick` says what it does)."""
  parser = argparse.ArgumentParser(description=doc.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help=quick)
  return parser


def with_defaults(args, full, quick):
  """What the command line left unset takes --quick's value, or a full run's."""
  for key, value in (quick if args.quick else full).items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  return args


# ---- Machine, load and timing ------------------------------------------------------------


def cpu_model():
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    return names[0] if names else platform.processor()
  except OSError:
    return platform.processor() or "unknown CPU"


def versions():
  import importlib.metadata  # pylint: disable=import-outside-toplevel
  out = []
  for name in ("jax", "flax", "optax", "torch", "transformers"):
    try:
      out.append(f"{name} {importlib.metadata.version(name)}")
    except importlib.metadata.PackageNotFoundError:
      out.append(f"{name} absent")
  return ", ".join(out)


class OtherLoad:
  """The share of the CPUs that processes other than ours (this one and `pids`) kept busy
  between two calls, from /proc (Linux; None elsewhere). The machine may be shared: a round
  others disturbed shows here, and the medians are there to outvote it."""

  def __init__(self, pids=()):
    self.pids = [os.getpid(), *pids]
    self.last = self._read()

  def _read(self):
    try:
      with open("/proc/stat", encoding="utf-8") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
      ours = 0
      for pid in self.pids:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
          fields = f.read().rsplit(")", 1)[1].split()
        ours += int(fields[11]) + int(fields[12])  # utime + stime of all its threads, in the same ticks.
    except (OSError, ValueError, IndexError):
      return None
    return sum(ticks), sum(ticks) - ticks[3] - ticks[4], ours

  def since_last(self):
    now, before = self._read(), self.last
    self.last = now
    if now is None or before is None:
      return None
    total, busy, ours = (a - b for a, b in zip(now, before))
    return max(0.0, busy - ours) / max(1, total)


def timed(fn, steps):
  """Seconds for `steps` calls of fn(); what the last returns is waited on (JAX is async)."""
  import jax  # pylint: disable=import-outside-toplevel
  start = time.perf_counter()
  out = None
  for _ in range(steps):
    out = fn()
  jax.block_until_ready(out)
  return time.perf_counter() - start


def best_ms(fn, *args, calls=30, repeats=5):
  """Milliseconds per call of fn(*args): the best of `repeats` means over `calls` calls."""
  fn(*args)
  return min(timed(lambda: fn(*args), calls) / calls for _ in range(repeats)) * 1e3


def interleave(contenders, rounds, steps, unit, pids=()):
  """{name: run(steps) -> rate}, every one in turn, `rounds` times: {name: [rate per round]}."""
  rates = {name: [] for name in contenders}
  load = OtherLoad(pids)
  for r in range(rounds):
    for name, run in contenders.items():
      time.sleep(SETTLE_S)
      rates[name].append(run(steps))
    others = load.since_last()
    print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {rates[n][-1]:.4g}" for n in contenders) + f" {unit}"
          + ("" if others is None else f" | other processes: {others:.0%} CPU"), flush=True)
  return rates


def median_ratio(rates, a, b):
  """Median over rounds of rates[a] / rates[b]: the pair of each round ran seconds apart."""
  return statistics.median(x / y for x, y in zip(rates[a], rates[b]))


class Skip(Exception):
  """A contender that cannot run here (no torch, a failed compile): a note, not an error."""


def torch_or_skip(transformers=True):
  missing = [name for name in ("torch", "transformers")[:1 + transformers] if not importlib.util.find_spec(name)]
  if missing:
    raise Skip(f"{' and '.join(missing)} not installed (pip install {' '.join(missing)})")
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(os.cpu_count())
  return torch


def first_line(e):
  return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:150]}"


def warm_up(fn, compiled):
  """fn() compiles and warms a contender up: where torch.compile fails (`compiled`), the
  contender is skipped with a note; any other failure is an error."""
  try:
    fn()
  except Exception as e:  # pylint: disable=broad-except
    if not compiled:
      raise
    raise Skip(f"torch.compile failed: {first_line(e)}") from None


# ---- Contender processes -----------------------------------------------------------------


class Worker:
  """One contender in a process of its own (this file with --_worker=SPEC), which builds and
  compiles it, says it is ready, then times `run N` on demand. Its stderr goes to a file,
  shown if it dies."""

  def __init__(self, name, spec, flags=""):
    self.name = name
    env = {**os.environ, **spec.get("env", {})}  # spec['env']: variables of this contender's own.
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flags}".strip()
    self.log = tempfile.TemporaryFile(mode="w+")
    self.process = subprocess.Popen([sys.executable, os.path.abspath(__file__), f"--_worker={json.dumps(spec)}"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                    env=env, cwd=ROOT)

  def read(self):
    for line in self.process.stdout:
      if line.startswith("@@ "):
        return json.loads(line[3:])
    self.log.seek(0)
    tail = "\n    ".join(self.log.read().strip().splitlines()[-6:])
    raise RuntimeError(f"contender '{self.name}' exited with status {self.process.wait()}:\n    {tail}")

  def ask(self, command):
    self.process.stdin.write(command + "\n")
    self.process.stdin.flush()
    return self.read()

  def run(self, steps):
    return self.ask(f"run {steps}")["rate"]

  def close(self):
    if self.process.poll() is None:
      try:
        self.process.stdin.write("quit\n")
        self.process.stdin.close()
        self.process.wait(timeout=60)
      except (OSError, subprocess.TimeoutExpired):
        self.process.kill()
        self.process.wait()
    self.log.close()


def start_workers(module, specs):
  """{name: (spec, flags)} -> ({name: ready Worker}, {name: its info}, [skip notes]); `module`
  names the script beside this one whose contender(spec) builds them. They all build and
  compile at once; a contender that cannot run here leaves a note."""
  workers = {name: Worker(name, dict(spec, module=module), flags) for name, (spec, flags) in specs.items()}
  ready, infos, notes = {}, {}, []
  try:
    for name, worker in workers.items():
      answer = worker.read()
      if "skip" in answer:
        notes.append(f"{name}: skipped ({answer['skip']})")
        worker.close()
      else:
        ready[name], infos[name] = worker, answer
  except BaseException:
    for worker in workers.values():
      worker.close()
    raise
  return ready, infos, notes


def worker_main(argv=None):
  """The child: build spec['module'].contender(spec), say ready, answer 'run N' / 'profile' /
  'quit' lines."""
  parser = argparse.ArgumentParser(description="one contender's process (started by start_workers)")
  parser.add_argument("--_worker", required=True, help="the JSON spec of the contender")
  spec = json.loads(parser.parse_args(argv)._worker)  # pylint: disable=protected-access

  def say(message):
    print("@@ " + json.dumps(message), flush=True)

  # scripts/ is not a package: the owner is found beside this file, sys.path[0] when run.
  build = importlib.import_module(spec["module"]).contender
  try:
    run, info, profile = build(spec)
  except Skip as e:
    say({"skip": str(e)})
    return 0
  say({"ready": True, **info})
  for line in sys.stdin:
    command = line.split()
    if not command or command[0] == "quit":
      break
    if command[0] == "run":
      say({"rate": run(int(command[1]))})
    elif command[0] == "profile":
      say(profile() if profile else {})
  return 0


# ---- The machine's header and matmul peak ------------------------------------------------


def matmul_peaks(n=2048, repeats=10):
  """{library: FLOP/s} of an n x n x n float32 matmul, best of `repeats`: a jitted jnp.dot,
  and torch.mm where torch is installed (its GEMM is faster here, so MFU uses the best)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  dot(a, b).block_until_ready()
  peaks = {"jnp.dot": 2 * n**3 / min(timed(lambda: dot(a, b), 1) for _ in range(repeats))}
  try:
    torch = torch_or_skip(transformers=False)
  except Skip:
    return peaks
  x, y = torch.randn(n, n), torch.randn(n, n)
  for _ in range(3):  # Warm up (its thread pool starts); CPU torch is synchronous.
    torch.mm(x, y)
  peaks["torch.mm"] = 2 * n**3 / min(timed(lambda: torch.mm(x, y).numel(), 1) for _ in range(repeats))
  return peaks


def others_before_start(seconds=1.0):
  """The share of the CPUs other processes kept busy over `seconds` (None off Linux)."""
  load = OtherLoad()
  time.sleep(seconds)
  return load.since_last()


def print_machine(busy):
  """The header of a run: date, CPU, versions, XLA_FLAGS, the load others put on the machine
  before the start (`busy`) and the float32 matmul peaks; returns the best peak, FLOP/s."""
  print(f"{datetime.date.today()} | {cpu_model()}, {os.cpu_count()} cores | Python {platform.python_version()} | "
        f"{versions()} | XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  if busy is not None:
    print(f"other processes kept {busy:.0%} of the CPUs busy before the start (load average "
          f"{os.getloadavg()[0]:.2f})" + ("; timings will be lower and noisier" if busy > 0.15 else ""))
  peaks = matmul_peaks()
  peak = max(peaks.values())
  print("float32 matmul, 2048^3, best of 10: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items())
        + f"; MFU is against {peak / 1e9:.0f}", flush=True)
  return peak


# ---- Where a compiled step's time goes ---------------------------------------------------


def hlo_op_names(hlo):
  """{instruction: op_name} of compiled HLO text; a fusion without one of its own takes the
  first op_name inside the computation it calls."""
  own, calls, first_in, current = {}, {}, {}, None
  for line in hlo.splitlines():
    head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) [^=]*\{$", line)
    if head:
      current = head.group(1)
      continue
    inst = re.match(r"^\s*(?:ROOT )?%([\w.\-]+) = ", line)
    if not inst:
      continue
    op = re.search(r'op_name="([^"]+)"', line)
    if op:
      own[inst.group(1)] = op.group(1)
      first_in.setdefault(current, op.group(1))
    called = re.search(r"calls=%([\w.\-]+)", line)
    if called:
      calls[inst.group(1)] = called.group(1)
  return {name: own.get(name) or first_in.get(calls.get(name), "") for name in set(own) | set(calls)}


def trace_events(one, steps):
  """({XLA op: thread-ms per step}, wall seconds per step) over `steps` calls of one()."""
  import jax  # pylint: disable=import-outside-toplevel
  events = {}
  with tempfile.TemporaryDirectory() as directory:
    start = time.perf_counter()
    with jax.profiler.trace(directory):
      timed(one, steps)
    wall = (time.perf_counter() - start) / steps
    path = next(os.path.join(d, f) for d, _, files in os.walk(directory) for f in files if f.endswith(".xplane.pb"))
    data = jax.profiler.ProfileData.from_file(path)
  for plane in data.planes:
    for line in plane.lines:
      if line.name == "python":
        continue
      for event in line.events:
        if "Execute" in event.name or event.name.startswith("$"):
          continue  # The executor's own spans, which contain the ops.
        events[event.name] = events.get(event.name, 0.0) + event.duration_ns / 1e6 / steps
  return events, wall


def profile_breakdown(compiled, one, group, steps=50):
  """Where a compiled step's time goes: {'wall_ms': per step under the profiler, 'groups':
  {group(op name, its op_name): thread-ms per step}}. Thread-ms: XLA:CPU runs independent
  ops on both cores at once, and tracing slows small ops down, so read the shares rather
  than the sums."""
  names = hlo_op_names(compiled.as_text())
  events, wall = trace_events(one, steps)
  groups = {}
  for name, ms in events.items():
    kind = group(name, names.get(name, ""))
    groups[kind] = groups.get(kind, 0.0) + ms
  return {"wall_ms": wall * 1e3, "groups": groups}


def print_breakdown(name, trace):
  """A profile_breakdown, the costliest group first: thread-ms per step and share."""
  total = sum(trace["groups"].values())
  print(f"\nwhere the step of {name} goes (XLA's trace events by kind of op, thread-ms per step and share; "
        f"{trace['wall_ms']:.1f} ms/step under the profiler):")
  for group, ms in sorted(trace["groups"].items(), key=lambda kv: -kv[1]):
    if ms >= 0.05:
      print(f"  {group:30} {ms:6.2f} {ms / total:6.1%}")


if __name__ == "__main__":
  # A contender's process. Run under its own name, not as __main__: the contender's script
  # imports bench_contenders too, and must get this module (its Skip, not a second class).
  import bench_contenders  # pylint: disable=import-self
  sys.exit(bench_contenders.worker_main())
