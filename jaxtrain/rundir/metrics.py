"""Where metrics go: metrics.jsonl, TensorBoard event files, and the console.

Only process 0 writes files. Rows are `{"step": N, "<prefix>/<name>": value, ...}`.
"""

import atexit
import contextlib
import datetime
import json
import logging as std_logging
import os
import sys
import time

from absl import logging
import jax
import numpy as np

from jaxtrain.rundir import layout
from jaxtrain.rundir import storage


class Writer:
  """Appends to the run's metrics (on gs://, see _Lines). A run starting at `start_step` (0,
  or the step it resumes from) first drops the rows after it; `start_step=None` only appends."""

  def __init__(self, workdir, start_step=0, trackers=(), config=None):
    self.enabled = jax.process_index() == 0
    self._trackers = list(trackers) if self.enabled else []  # config.trackers: see jaxtrain.rundir.trackers.
    if not self.enabled:
      return
    from tensorboardX import SummaryWriter, record_writer  # pylint: disable=import-outside-toplevel
    record_writer.register_writer_factory("gs", _EventObjects())
    self._jsonl = _Lines(os.path.join(workdir, layout.METRICS), start_step, create=True)
    self._samples = _Lines(os.path.join(workdir, layout.SAMPLES), start_step)  # Made at the first text.
    # purge_step hides the events an interrupted run wrote after the checkpoint. An event
    # file is named by the second it starts and the host: the suffix keeps a start within
    # the same second (a resume, an evaluation) from overwriting the one before.
    self._tb = SummaryWriter(os.path.join(workdir, layout.TENSORBOARD), flush_secs=30,
                             purge_step=None if start_step is None else start_step + 1,
                             filename_suffix=f".{os.getpid()}.{'eval' if start_step is None else start_step}")
    for tracker in self._trackers:
      tracker.start(workdir, config, start_step)

  def write(self, step, metrics):
    if not self.enabled:
      return
    row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    self._jsonl.write([json.dumps(row) + "\n"])
    scalars = {key: value for key, value in row.items() if key != "step" and isinstance(value, (int, float))}
    for key, value in scalars.items():
      self._tb.add_scalar(key, value, global_step=step)
    for tracker in self._trackers:
      tracker.write(int(step), scalars)

  def write_texts(self, step, name, records):
    """Text an evaluator made (e.g. {'prompt', 'completion'} dicts): a row each in
    samples.jsonl, and one TensorBoard text entry '<name>/samples'."""
    if not self.enabled or not records:
      return
    self._samples.write([json.dumps({"step": int(step), "evaluator": name, **record}, ensure_ascii=False) + "\n"
                         for record in records])
    # Markdown: each field as a fenced block keeps code's indentation.
    text = "\n\n".join("\n".join(f"**{key}**\n```\n{value}\n```" for key, value in record.items()) for record in records)
    self._tb.add_text(f"{name}/samples", text, global_step=step)
    for tracker in self._trackers:
      tracker.write_texts(int(step), name, records)

  def flush(self):
    """Before a checkpoint: on gs://, the rows waiting are written (a saved step has them)."""
    if self.enabled:
      self._jsonl.flush()
      self._samples.flush()

  def close(self):
    if self.enabled:
      self._jsonl.close()
      self._samples.close()
      self._tb.close()
      for tracker in self._trackers:
        tracker.close()


class _EventObjects:
  """tensorboardX's writers of gs:// event files, through jaxtrain.rundir.storage. In place of
  tensorboardX's own, which uploads again whenever Python collects it: after the run
  (and, in the tests, after the emulator stopped, where it retries for 120 s)."""

  def open(self, path):
    return _EventObject(path)

  def directory_check(self, path):
    del path  # A bucket needs no directories.


class _EventObject:
  """One event file: the records held here, the object written whole at each flush."""

  def __init__(self, path):
    self.path, self._buffer, self._written = path, bytearray(), 0

  def write(self, data):
    self._buffer += data

  def flush(self):
    if len(self._buffer) != self._written:
      storage.write_bytes(self.path, bytes(self._buffer))
      self._written = len(self._buffer)

  def close(self):
    self.flush()


class _Lines:
  """A JSON-lines file that grows. On a disk, appended to. On gs://, where nothing appends,
  lines wait here and `flush` appends them as object storage allows (storage.append_text):
  at most once a second (GCS's rate for writing one object), before each checkpoint (a
  saved step has its rows) and at the end."""

  def __init__(self, path, start_step, create=False):
    self.path, self._file, self._pending, self._flushed = path, None, [], 0.0
    if start_step is not None:
      _drop_rows_after(path, start_step)
    if create and not storage.is_gcs(path):
      self._open()
    elif create and not storage.exists(path):
      storage.write_text(path, "")

  def write(self, lines):
    if not storage.is_gcs(self.path):
      self._open().writelines(lines)
      self._file.flush()
      return
    self._pending += lines
    if time.monotonic() - self._flushed >= 1.0:
      self.flush()

  def flush(self):
    if self._pending:
      storage.append_text(self.path, "".join(self._pending))
      self._pending, self._flushed = [], time.monotonic()

  def close(self):
    self.flush()
    if self._file:
      self._file.close()

  def _open(self):
    if self._file is None:
      self._file = open(self.path, "a", encoding="utf-8")  # pylint: disable=consider-using-with
    return self._file


def _lines_of(text):
  """Lines ending in '\n' (a last one may not). Not str.splitlines: a sample's text may hold
  U+2028 and the like, which JSON leaves as they are."""
  lines = [line + "\n" for line in text.split("\n")]
  lines[-1] = lines[-1][:-1]
  return lines if lines[-1] else lines[:-1]


def _drop_rows_after(path, step):
  """Rewrites metrics.jsonl without rows past `step` (all or nothing: a crash loses nothing)."""
  if not storage.exists(path):
    return
  lines = _lines_of(storage.read_text(path))
  whole = lines if not lines or lines[-1].endswith("\n") else lines[:-1]  # A crash may cut the last.
  kept = [line for line in whole if line.strip() and json.loads(line)["step"] <= step]
  if kept != lines:
    storage.write_text(path, "".join(kept))


def _plain(value):
  return value if isinstance(value, (int, float, str)) else np.asarray(value).item()


class Progress:
  """Throughput and ETA of the training steps, not counting evaluation or checkpointing,
  and the training seconds so far (`train_seconds`: carried over a resume)."""

  def __init__(self, first_step, total_steps, batch_size, train_seconds=0.0, *, tokens_per_example=None,
               flops_per_example=None, peak_flops=None):
    """With `tokens_per_example` it also reports tokens/s; with `flops_per_example` (the
    model's training FLOPs) and `peak_flops` (FLOP/s of all devices) the model-FLOPs
    utilisation, MFU = achieved / peak FLOP/s."""
    self.total_steps, self.batch_size = total_steps, batch_size
    self.tokens_per_example, self.flops_per_example, self.peak_flops = tokens_per_example, flops_per_example, peak_flops
    self._last_step, self._last_time = first_step, time.perf_counter()
    self._paused = 0.0
    self.train_seconds = train_seconds

  @contextlib.contextmanager
  def pause(self):
    """Time spent inside is left out of the rates (evaluation, checkpoints)."""
    start = time.perf_counter()
    try:
      yield
    finally:
      self._paused += time.perf_counter() - start

  def measure(self, step):
    """Rates since the previous call: steps/s, examples/s and the estimated time left."""
    now = time.perf_counter()
    seconds = max(now - self._last_time - self._paused, 1e-9)
    steps_per_sec = (step - self._last_step) / seconds
    self.train_seconds += seconds
    self._last_step, self._last_time, self._paused = step, now, 0.0
    eta = (self.total_steps - step) / steps_per_sec if steps_per_sec > 0 else float("inf")
    examples_per_sec = steps_per_sec * self.batch_size
    rates = {"steps_per_sec": steps_per_sec, "examples_per_sec": examples_per_sec,
             "eta_seconds": eta, "train_seconds": self.train_seconds}
    if self.tokens_per_example:
      rates["tokens_per_sec"] = examples_per_sec * self.tokens_per_example
    if self.flops_per_example and self.peak_flops:
      rates["mfu"] = examples_per_sec * self.flops_per_example / self.peak_flops
    return rates


def progress_line(step, total_steps, train_metrics, rates):
  """One line per log interval that reads well in a plain log file."""
  eta = rates["eta_seconds"]
  eta_text = str(datetime.timedelta(seconds=round(eta))) if np.isfinite(eta) else "?"
  loss = f"loss {train_metrics['loss']:.4f}" if "loss" in train_metrics else "every step skipped"
  throughput = f"{_si(rates['examples_per_sec'])} examples/s"
  if "tokens_per_sec" in rates:
    throughput += f" | {_si(rates['tokens_per_sec'])} tokens/s"
  if "mfu" in rates:
    throughput += f" | MFU {100 * rates['mfu']:.1f}%"
  return (f"step {step}/{total_steps} ({100 * step / total_steps:.1f}%) | {loss} | lr {train_metrics['lr']:.3g} | "
          f"{rates['steps_per_sec']:.1f} steps/s | {throughput} | ETA {eta_text}")


def eval_line(name, metrics):
  parts = [f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()]
  return f"{name}: " + " | ".join(parts)


def _si(x):
  for unit, scale in (("M", 1e6), ("k", 1e3)):
    if x >= scale:
      return f"{x / scale:.1f}{unit}"
  return f"{x:.1f}"


def log(line):
  logging.info("%s", line)


def log_progress(line, stream=None):
  """The progress line: on a terminal it is rewritten in place (the next log line starts
  on a line of its own); in a log file, or piped, it is one log line per interval."""
  stream = stream or sys.stderr
  if not stream.isatty():
    log(line)
    return
  if _IN_PLACE.stream is not stream:  # The first use (or another stream): newlines before other lines.
    _IN_PLACE.stream = stream
    std_logging.getLogger("absl").addFilter(_IN_PLACE)
    atexit.register(_IN_PLACE.close_line)
  stream.write(f"\r\x1b[K{time.strftime('%H:%M:%S')} {line}")
  stream.flush()
  _IN_PLACE.open = True


class _CloseLine(std_logging.Filter):
  """Ends the in-place progress line before any other log line is written."""

  stream, open = None, False

  def filter(self, record):
    self.close_line()
    return True

  def close_line(self):
    if self.open:
      self.open = False
      self.stream.write("\n")
      self.stream.flush()


_IN_PLACE = _CloseLine()
