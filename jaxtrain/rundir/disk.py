"""A full disk under a work directory: found in an error's chain, whichever library raised
it, and said in one line that names the directory, the space left and the checkpoint a new
run resumes from."""

import errno
import os
import shutil

from jaxtrain.errors import UserError, chain
from jaxtrain.rundir import layout


class DiskFull(UserError):
  """A save ran out of disk space."""


def full(error):
  """The ENOSPC error in `error`'s chain (causes and contexts), or None. Orbax raises the
  OSError itself (from its finalize) or tensorstore's `RESOURCE_EXHAUSTED: ... [OS error
  28: No space left on device]` (from the array writes)."""
  for e in chain(error):
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
      return e
    if f"[OS error {errno.ENOSPC}:" in str(e) or os.strerror(errno.ENOSPC) in str(e):
      return e
  return None


def message(directory, what, workdir):
  """'the disk holding DIR is full (...): WHAT; free space ... resume from checkpoint N' of `workdir`."""
  try:
    usage = shutil.disk_usage(directory)
    space = f"{_size(usage.free)} free of {_size(usage.total)}"
  except OSError:
    space = "No space left on device"
  newest = layout.newest_complete_step(workdir)
  again = ("run the same command again to start over (no checkpoint was complete yet)" if newest is None else
           f"run the same command again to resume from checkpoint {newest}")
  return (f"the disk holding {directory} is full ({space}): {what}; free space there (or lower "
          f"checkpoint.keep) and {again}")


def _size(n):
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if n < 1024 or unit == "TiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  return str(n)
