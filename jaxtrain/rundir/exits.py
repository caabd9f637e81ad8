"""How a command ends when something fails: the exit policy of `jaxtrain.launch` and the
other commands.

A failure a user can act on ends as one line on stderr, `error: ...`, without a traceback:
a mistake (exit status 2), a full disk (2), a checkpoint that does not restore (2). A
preempted run exits 128 + SIGTERM (the job is not finished); a lost peer process exits 75
(see peers.py). Anything else is a bug and keeps its traceback.

The commands' edge is here too: their flag mistakes (`parse_flags` for absl,
`ArgumentParser` for argparse), the paths they are given (`absolute_path`), and whether
they can write where they will (`writable_problem`), all before any work.
"""

import argparse
import os
import re
import signal
import sys
import tempfile
import threading
import traceback

from absl import flags
from absl import logging

from jaxtrain.errors import UserError, chain, did_you_mean, exit_with
from jaxtrain.rundir import storage

# faults (TensorStore) and preemption (JAX) are imported where used: a second at start-up
# that the commands' flag parsing (plot's too) does not need.


def report(error, workdir, show_traceback=False):
  """Ends the process for the failures a user can act on; returns for any other (which the
  command then raises, traceback and all)."""
  from jaxtrain.checkpoints import faults  # pylint: disable=import-outside-toplevel
  from jaxtrain.rundir.preemption import Preempted  # pylint: disable=import-outside-toplevel
  if faults.disk_full(error) is not None:
    _DISK_FULL_SEEN.append(error)  # Later ENOSPC tracebacks of other threads are this one's echo.
  if isinstance(error, Preempted):
    logging.warning("%s", error)
    sys.exit(128 + signal.SIGTERM)  # As if the signal had ended it: the job is not finished.
  if isinstance(error, UserError):
    if show_traceback:
      traceback.print_exc()
    exit_with(str(error))
  if faults.disk_full(error) is not None:
    # Orbax's DiskFull may be the context of a later ENOSPC (the metrics writer's close).
    full = next((e for e in chain(error) if isinstance(e, faults.DiskFull)), None)
    if show_traceback:
      traceback.print_exc()
    workdir = storage.absolute(workdir)
    exit_with(str(full) if full else faults.disk_full_message(
        workdir, f"writing to it failed ({faults.disk_full(error)})", workdir))


_DISK_FULL_SEEN = []


def quiet_disk_full_in_threads_and_atexit():
  """A full disk fails more writes than the one reported: TensorBoard's writer thread and
  its atexit flush each print an ENOSPC traceback (measured on a full 4 MiB tmpfs: 3 more
  tracebacks after the save's). The run reports the full disk in one line (see `report`);
  those are dropped here. Any other exception in a thread or at exit still prints."""
  from jaxtrain.checkpoints import faults  # pylint: disable=import-outside-toplevel
  previous_thread_hook, previous_unraisable_hook = threading.excepthook, sys.unraisablehook

  def thread_hook(args):
    if args.exc_value is not None and faults.disk_full(args.exc_value) is not None:
      _DISK_FULL_SEEN.append(args.exc_value)
    elif _DISK_FULL_SEEN and _in_tensorboard(args.exc_traceback):
      pass  # Its writer's close failed on the full disk, and its thread then reads a closed queue.
    else:
      previous_thread_hook(args)

  def unraisable_hook(unraisable):
    if unraisable.exc_value is not None and faults.disk_full(unraisable.exc_value) is not None:
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


# ---- The commands' edge: flags, paths, places to write ----------------------------------------------


def parse_flags(argv):
  """absl's flag parsing for `app.run(main, flags_parser=exits.parse_flags)`: a flag mistake
  ends as every other mistake does, one `error:` line and exit status 2, not absl's
  "FATAL Flags parsing error" and exit status 1."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    exit_with(flag_problem(e, argv))


def flag_problem(error, argv):
  """absl's message for a flag mistake (`error`, from parsing `argv`) in one line that names
  the flag and the fix; a message of another shape as absl wrote it."""
  text = " ".join(str(error).split())
  if isinstance(error, flags.UnrecognizedFlagError):
    close = re.search(r"Did you mean: ([\w.-]+)", text)
    hint = f" (did you mean '--{close.group(1)}'?)" if close else ""
    return f"unknown flag --{error.flagname}{hint}; `{_command()} --help` lists the flags"
  missing = re.fullmatch(r"Missing value for flag -+([\w.-]+)", text)
  if missing:
    return f"--{missing.group(1)} needs a value: give --{missing.group(1)}=VALUE"
  required = re.fullmatch(r"flag --([\w.-]+)=None: Flag --\1 must have a value other than None\.", text)
  if required and required.group(1) in flags.FLAGS:
    name = required.group(1)
    what = flags.FLAGS[name].help.strip().rstrip(".")
    return f"--{name} is required: {what[:1].lower()}{what[1:]}"
  bad = re.match(r"flag --([\w.-]+)=", text)
  if isinstance(error, flags.IllegalFlagValueError) and bad and bad.group(1) in flags.FLAGS:
    name = bad.group(1)
    expected = _expected(flags.FLAGS[name].parser)
    # absl's text is 'flag --NAME=VALUE: why', and VALUE may hold ': ': take it as typed.
    given = next((v for v in _values(argv, name) if str(error).startswith(f"flag --{name}={v}: ")), None)
    if expected and given is not None:
      return f"--{name} must be {expected}, got {given or 'nothing'}"
  return text


def _expected(parser):
  """What a flag's parser accepts, in words ('a positive integer'), or None."""
  if isinstance(parser, flags.EnumParser):
    return f"one of {', '.join(parser.enum_values)}"
  if isinstance(parser, flags.BooleanParser):
    return "true or false"
  return getattr(parser, "syntactic_help", None) or None


def _values(argv, name):
  """The values given to --NAME in `argv`, as typed (--NAME=V, -NAME=V, or --NAME V)."""
  for i, arg in enumerate(argv[1:], 1):
    flag, equals, value = arg.partition("=")
    if flag.lstrip("-") == name and flag.startswith("-"):
      if equals:
        yield value
      elif i + 1 < len(argv):
        yield argv[i + 1]


def _command():
  """How the user ran this command: 'python -m jaxtrain.NAME'."""
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  return f"python -m {spec.name}" if spec and spec.name else os.path.basename(sys.argv[0])


class ArgumentParser(argparse.ArgumentParser):
  """argparse whose mistakes end as one `error:` line and exit status 2, like every jaxtrain
  command's; a flag it does not know gets the one it may have meant, and where to look."""

  def error(self, message):
    if message.startswith("unrecognized arguments: "):
      typed = re.match(r"unrecognized arguments: --([\w-]+)", message)
      known = [option[2:] for option in self._option_string_actions if option.startswith("--")]
      message += did_you_mean(typed.group(1), known, prefix="--") if typed else ""
      message += f"; `{self.prog} --help` lists the flags"
    exit_with(message)


def absolute_path(value, flag):
  """A path flag's value made absolute once, at the command line's edge: '~' expanded (as
  the library's readers do), a gs:// path kept (its bucket's name checked, naming the
  flag). None and '' stay as they are: 'not given'."""
  if not value:
    return value
  if storage.is_gcs(value):
    storage.check_name(value, f"--{flag}={value}")
    return storage.absolute(value)
  return storage.absolute(os.path.expanduser(value))


def writable_problem(directory):
  """Why files cannot be made in the local, existing `directory` (the OS's words), or None.
  Tried, not asked: os.access says yes to root everywhere but on a read-only mount, and
  knows nothing of ACLs or root squashed on NFS. The trial file is removed at once."""
  try:
    handle, probe = tempfile.mkstemp(prefix=".jaxtrain-write-check-", dir=directory)
  except OSError as e:
    return e.strerror or str(e)
  os.close(handle)
  os.remove(probe)
  return None


def appendable_problem(path):
  """Why the existing file `path` cannot be appended to, or None; its bytes unchanged."""
  try:
    with open(path, "a", encoding="utf-8"):
      pass
  except OSError as e:
    return e.strerror or str(e)
  return None


def existing_parent(path, flag):
  """The nearest directory above `path` that exists (what a write would create its
  directories in); a file in its place is the user's mistake."""
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise UserError(f"--{flag}={path}: {parent} is a file, not a directory")
  return parent
