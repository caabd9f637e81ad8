"""A JAX profiler trace of a few training steps: `config.profile`.

    config.profile = dict(start_step=20, num_steps=5)   # traces steps 20..24

The trace goes to WORKDIR/profile/plugins/profile/<time>/ (WORKDIR/profile/process_<i>/...
with several processes): `<host>.xplane.pb` for TensorBoard's profile plugin
(`pip install tensorboard-plugin-profile`, then `tensorboard --logdir=WORKDIR/profile`) and
`perfetto_trace.json.gz` for https://ui.perfetto.dev. Start after the first steps so the
trace shows the steady state, not compilation and warm-up. A run resumed past the window,
or stopped inside it (preemption, early stopping), writes no trace.
"""

import os
import shutil
import tempfile

from absl import logging
import jax

from jaxtrain.errors import UserError
from jaxtrain.rundir import storage


class Profile:
  """When to trace; `at(step, ...)` is called before each step runs."""

  def __init__(self, section, total_steps):
    self.start = section.get("start_step", kind=int)
    self.num = section.get("num_steps", 5, minimum=1)
    if self.start is None:
      self.num = 0  # Off.
      return
    if self.start < 1 or self.start + self.num > total_steps:
      raise UserError(f"config key '{section.path('start_step')}'={self.start} with num_steps={self.num} traces "
                      f"steps {self.start}..{self.start + self.num - 1}, which must lie in 1..{total_steps - 1} "
                      f"(the run trains {total_steps} steps)")
    self.directory = self._local = None

  def at(self, step, state, workdir):
    if not self.num:
      return
    if step == self.start:
      self.directory = os.path.join(workdir, "profile")
      if jax.process_count() > 1:
        self.directory = os.path.join(self.directory, f"process_{jax.process_index()}")
      # JAX's own Cloud Storage client would write gs:// itself, but it follows no emulator
      # and finds credentials its own way: trace to local disk, then copy the files over.
      self._local = tempfile.mkdtemp(prefix="jaxtrain-profile-") if storage.is_gcs(workdir) else self.directory
      jax.block_until_ready(state)  # The trace holds these steps alone.
      jax.profiler.start_trace(self._local, create_perfetto_trace=True)
    elif step == self.start + self.num and self.directory:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      if self._local != self.directory:
        storage.put_tree(self._local, self.directory)
        shutil.rmtree(self._local)
      logging.info("Profiler trace of steps %d-%d in %s: tensorboard --logdir=%s (profile plugin), or "
                   "perfetto_trace.json.gz in ui.perfetto.dev.", self.start, step - 1, self.directory, self.directory)
      self.directory = None
