"""One live run per work directory.

On a local (or shared POSIX) disk the lock is an exclusive `flock` on `DIR/.lock`, held
while the run lives. The operating system drops it when the process ends, however it ends
(SIGKILL included), so the lock file a dead run leaves behind never blocks the next one.

On Cloud Storage nothing is dropped when a process dies, so the lock is an object,
`gs://.../DIR/.lock`, that lives only while it is refreshed:
  - it is created only if absent (a generation precondition of 0: GCS's atomic create);
  - the run rewrites it every REFRESH_SECONDS, each time on condition that it is still the
    generation it wrote last (a run whose lock was taken over finds out, and stops);
  - a lock not rewritten for STALE_SECONDS belongs to a dead run (a preempted VM), and so
    does one whose holder was a process of this host that has ended (a run killed here and
    started again here): the next run takes it over by rewriting it on condition of the
    generation it found, so of two runs that find it stale at once only one gets it.
Staleness compares the object's update time, the bucket's clock, with this host's clock:
Cloud TPU and GCE VMs keep theirs in sync with Google's, well inside the margin.
"""

import datetime
import fcntl
import os
import re
import socket
import sys
import threading

from absl import logging

from jaxtrain.errors import UserError
from jaxtrain.rundir import storage

REFRESH_SECONDS = 20.0
STALE_SECONDS = 90.0  # A few missed refreshes, so a slow request never loses a live run's lock.
LOST_LOCK_EXIT = 1
REQUEST_TIMEOUT = 10.0  # Seconds per request: a refresh must not outwait STALE_SECONDS.


def lock_for(workdir):
  """The lock of `workdir`, local or gs://, not yet acquired."""
  return ObjectLock(workdir) if storage.is_gcs(workdir) else WorkdirLock(workdir)


def _holder():
  return f"pid {os.getpid()} on {socket.gethostname()}"


def _in_use(workdir, holder):
  return UserError(f"--workdir={workdir} is in use by a live run ({holder}); wait for it to end, stop it, or "
                   f"pick another directory")


def _dead_here(holder):
  """Whether `holder` ('pid N on HOST') is a process of this host that has ended: a run
  killed here is rerun here at once, without waiting for its lock to go stale."""
  found = re.fullmatch(r"pid (\d+) on (\S+)", holder)
  if not found or found.group(2) != socket.gethostname():
    return False
  try:
    os.kill(int(found.group(1)), 0)
  except ProcessLookupError:
    return True
  except PermissionError:  # Alive, another user's.
    return False
  return False


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
      raise _in_use(os.path.dirname(self.path), holder) from None
    os.ftruncate(fd, 0)
    os.write(fd, _holder().encode())
    self._fd = fd
    return self

  def release(self):
    if self._fd is not None:
      os.close(self._fd)  # Closing drops the flock.
      self._fd = None


class ObjectLock:
  """The lock object of a gs:// work directory (see the module's docstring)."""

  def __init__(self, workdir):
    self.workdir = storage.absolute(workdir)  # gs://b/p/ and gs://b/p: one directory, one lock.
    self._bucket_name, self._key = storage.bucket_of(f"{self.workdir}/.lock")
    self._generation = None
    self._stop = threading.Event()
    self._thread = None

  def acquire(self):
    from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
    try:
      self._generation = self._write(0)
    except exceptions.PreconditionFailed:
      self._take_over_if_stale()
    except Exception as e:  # pylint: disable=broad-except
      raise self._cannot(e) from None
    self._thread = threading.Thread(target=self._refresh, name="jaxtrain-workdir-lock", daemon=True)
    self._thread.start()
    return self

  def release(self):
    if self._thread is None:
      return
    self._stop.set()
    self._thread.join()
    self._thread = None
    try:
      self._blob().delete(if_generation_match=self._generation, timeout=REQUEST_TIMEOUT)
    except Exception as e:  # pylint: disable=broad-except  (taken over, or the bucket is gone: not ours to delete)
      logging.warning("Could not delete the lock object %s/.lock: %s", self.workdir, e)

  def _blob(self):
    return storage.client().bucket(self._bucket_name).blob(self._key)

  def _write(self, generation):
    """Writes the lock on condition of `generation` (0: that there is none); its new generation."""
    blob = self._blob()
    blob.upload_from_string(_holder(), if_generation_match=generation, timeout=REQUEST_TIMEOUT)
    return blob.generation

  def _cannot(self, error):
    return UserError(f"--workdir={self.workdir}: cannot write the run's lock object: {storage.access_problem(error)}")

  def _take_over_if_stale(self):
    from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
    try:
      current = self._blob().bucket.get_blob(self._key, timeout=REQUEST_TIMEOUT)
      if current is None:  # Released in between: try once more to create it.
        self._generation = self._write(0)
        return
      holder = current.download_as_text(if_generation_match=current.generation) if current.size else ""
      age = (datetime.datetime.now(datetime.timezone.utc) - current.updated).total_seconds()
      dead = _dead_here(holder)
      if age < STALE_SECONDS and not dead:
        raise _in_use(self.workdir, f"{holder or 'another process'}, lock refreshed {max(age, 0):.0f} s ago")
      self._generation = self._write(current.generation)
    except (exceptions.PreconditionFailed, exceptions.NotFound):  # Refreshed, or taken, as we looked.
      raise _in_use(self.workdir, "another run that holds it or took it just now") from None
    except UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise self._cannot(e) from None
    why = "it is not running on this host" if dead else f"not refreshed for {age:.0f} s"
    logging.warning("Took over the lock of --workdir=%s from %s: %s, so that run is gone.", self.workdir,
                    holder or "an unnamed process", why)

  def _refresh(self):
    from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
    while not self._stop.wait(REFRESH_SECONDS):
      try:
        self._generation = self._write(self._generation)
      except exceptions.PreconditionFailed:
        # Another run took the directory over (this one's refreshes failed for STALE_SECONDS)
        # and resumed from its newest checkpoint. Anything more from this run, a save or the
        # metrics written on the way out, would mix two runs: stop at once, writing nothing.
        sys.stderr.write(f"error: the lock of --workdir={self.workdir} was taken over by another run (this run "
                         f"could not refresh it for {STALE_SECONDS:.0f} s); stopping now without writing more: "
                         f"the other run goes on from the newest checkpoint\n")
        sys.stderr.flush()
        os._exit(LOST_LOCK_EXIT)
      except Exception as e:  # pylint: disable=broad-except  (a network hiccup: the next refresh may pass)
        logging.warning("Refreshing the lock of --workdir=%s failed (%s); trying again in %.0f s.", self.workdir, e,
                        REFRESH_SECONDS)
