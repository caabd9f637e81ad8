"""Orbax checkpoints of the train state and the data iterator, in `workdir/checkpoints/`.

Each saved step is one directory, `checkpoints/<step>/`, with two items: 'state' (the
TrainState, global arrays) and 'data' (the Grain iterator position of this process).
Saves are asynchronous: training goes on while the files are written, and Orbax only
makes a step visible once all of it is on disk.
"""

import os

import grain
import orbax.checkpoint as ocp


class Checkpointer:

  def __init__(self, workdir, *, every_steps, keep):
    self.every_steps = every_steps
    self._manager = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        item_names=("state", "data"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True),
    )

  def latest_step(self):
    return self._manager.latest_step()

  def due(self, step, total_steps):
    return step == total_steps or (self.every_steps is not None and step % self.every_steps == 0)

  def save(self, step, state, data_iterator):
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)))

  def restore(self, step, abstract_state, data_iterator):
    """Restores into `abstract_state`'s shardings and moves `data_iterator` in place."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=grain.checkpoint.CheckpointRestore(data_iterator)))
    return restored["state"]

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()
