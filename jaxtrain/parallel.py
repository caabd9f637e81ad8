"""How arrays are placed on devices: the 'jit' strategy, a Mesh with a 'data' axis.

The batch is split over every device of every process along the 'data' axis; the train
state is replicated. Each process feeds only its own slice of the global batch.
"""

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from jaxtrain.errors import UserError


class Strategy:

  def __init__(self):
    self.mesh = Mesh(np.array(jax.devices()), ("data",))
    self.batch_sharding = NamedSharding(self.mesh, P("data"))
    self.replicated = NamedSharding(self.mesh, P())

  @property
  def process_index(self):
    return jax.process_index()

  @property
  def process_count(self):
    return jax.process_count()

  def check_batch_size(self, batch_size, key):
    devices = self.mesh.devices.size
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0 or batch_size % devices:
      raise UserError(f"{key}={batch_size!r} cannot be split evenly over {devices} devices; "
                      f"use a positive multiple of {devices}")

  def shard(self, local_batch):
    """This process's numpy batch -> global jax.Arrays split along 'data'."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.batch_sharding, x), local_batch)

  def init(self, create_fn):
    """Runs `create_fn()` jitted, its outputs created directly in their shardings."""
    return jax.jit(create_fn, out_shardings=self.replicated)()

  def abstract_state(self, create_fn):
    """Shapes, dtypes and shardings of `create_fn()`'s output, computing nothing."""
    shapes = jax.eval_shape(create_fn)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.replicated), shapes)

  def abstract_batch(self, local_batch):
    """The global batch's shapes and shardings, given this process's numpy batch."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        (x.shape[0] * self.process_count,) + x.shape[1:], x.dtype, sharding=self.batch_sharding), local_batch)

  def compile_step(self, step_fn, abstract_state, local_batch, *, donate):
    """`step_fn(state, batch)` compiled ahead of time for these shapes: it cannot
    recompile in the loop, and a shape mismatch fails now rather than at the first call."""
    jitted = jax.jit(step_fn, out_shardings=self.replicated, donate_argnums=0 if donate else ())
    return jitted.lower(abstract_state, self.abstract_batch(local_batch)).compile()
