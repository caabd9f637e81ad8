"""One live run per work directory.

The lock is an exclusive `flock` on `DIR/.lock`, held while the run lives. The operating
system drops it when the process ends, however it ends (SIGKILL included), so the lock
file a dead run leaves behind never blocks the next one.
"""

import fcntl
import os
import socket

from jaxtrain.errors import UserError


class WorkdirLock:

  def __init__(self, workdir):
    self.path = os.path.join(workdir, ".lock")
    self._fd = None

  def acquire(self):
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
      os.close(fd)
      raise UserError(f"--workdir={os.path.dirname(self.path)} is in use by a live run ({holder}); "
                      f"wait for it to end, stop it, or pick another directory") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
    self._fd = fd
    return self

  def release(self):
    if self._fd is not None:
      os.close(self._fd)  # Closing drops the flock.
      self._fd = None
