"""Preemption: SIGTERM (what Cloud TPU and cluster schedulers send before they take the
machines back) becomes "save at the next step boundary, wait for the save, exit".

With one process a SIGTERM handler sets a flag. With several, JAX's preemption sync point
makes every process stop at the same step, whichever of them got the signal.
"""

import signal
import threading

import jax
from jax.experimental import multihost_utils


class Preempted(Exception):
  """Raised after the checkpoint of `step` is saved; the same command resumes from it."""

  def __init__(self, step):
    super().__init__(f"preempted (SIGTERM): saved a checkpoint at step {step}; run the same command to resume")
    self.step = step


class PreemptionWatch:

  def __init__(self):
    self._requested = False
    self._previous = None
    self._several = jax.process_count() > 1

  def start(self):
    # Signal handlers can only be set from the main thread (not, say, from a notebook worker).
    if not self._several and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def stop(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _on_sigterm(self, signum, frame):
    del signum, frame
    self._requested = True

  def reached(self, step):
    """True at the step where every process should save and stop."""
    if self._several:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._requested
