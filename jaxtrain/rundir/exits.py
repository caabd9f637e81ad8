"""How a command ends when something fails: the exit policy of `jaxtrain.launch` and the
other commands.

A failure a user can act on ends as one line on stderr, `error: ...`, without a traceback:
a mistake (exit status 2), a full disk (2), a checkpoint that does not restore (2). A
preempted run exits 128 + SIGTERM (the job is not finished); a lost peer process exits 75
(see peers.py). Anything else is a bug and keeps its traceback.
"""

import signal
import sys
import threading
import traceback

from absl import logging

from jaxtrain.errors import UserError, chain, exit_with
from jaxtrain.rundir import disk
from jaxtrain.rundir.preemption import Preempted
from jaxtrain.rundir import storage


def report(error, workdir, show_traceback=False):
  """Ends the process for the failures a user can act on; returns for any other (which the
  command then raises, traceback and all)."""
  if disk.full(error) is not None:
    _DISK_FULL_SEEN.append(error)  # Later ENOSPC tracebacks of other threads are this one's echo.
  if isinstance(error, Preempted):
    logging.warning("%s", error)
    sys.exit(128 + signal.SIGTERM)  # As if the signal had ended it: the job is not finished.
  if isinstance(error, UserError):
    if show_traceback:
      traceback.print_exc()
    exit_with(str(error))
  if disk.full(error) is not None:
    # Orbax's DiskFull may be the context of a later ENOSPC (the metrics writer's close).
    full = next((e for e in chain(error) if isinstance(e, disk.DiskFull)), None)
    if show_traceback:
      traceback.print_exc()
    workdir = storage.absolute(workdir)
    exit_with(str(full) if full else disk.message(
        workdir, f"writing to it failed ({disk.full(error)})", workdir))


_DISK_FULL_SEEN = []


def quiet_disk_full_in_threads_and_atexit():
  """A full disk fails more writes than the one reported: TensorBoard's writer thread and
  its atexit flush each print an ENOSPC traceback (measured on a full 4 MiB tmpfs: 3 more
  tracebacks after the save's). The run reports the full disk in one line (see `report`);
  those are dropped here. Any other exception in a thread or at exit still prints."""
  previous_thread_hook, previous_unraisable_hook = threading.excepthook, sys.unraisablehook

  def thread_hook(args):
    if args.exc_value is not None and disk.full(args.exc_value) is not None:
      _DISK_FULL_SEEN.append(args.exc_value)
    elif _DISK_FULL_SEEN and _in_tensorboard(args.exc_traceback):
      pass  # Its writer's close failed on the full disk, and its thread then reads a closed queue.
    else:
      previous_thread_hook(args)

  def unraisable_hook(unraisable):
    if unraisable.exc_value is not None and disk.full(unraisable.exc_value) is not None:
      _DISK_FULL_SEEN.append(unraisable.exc_value)
    else:
      previous_unraisable_hook(unraisable)

  threading.excepthook, sys.unraisablehook = thread_hook, unraisable_hook


def _in_tensorboard(tb):
  return any("/tensorboardX/" in frame.filename for frame in traceback.extract_tb(tb)) if tb else False


def warn_of_quiet_failures():
  """At the end of a run that otherwise succeeded: a write that failed quietly in a thread."""
  if _DISK_FULL_SEEN:
    logging.warning("A write failed: %s.", _DISK_FULL_SEEN[0])
