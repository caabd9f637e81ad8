"""How arrays are placed on devices, from `config.parallel`.

    parallel.strategy = 'jit'    # or 'pmap'
    parallel.mesh = dict(data=-1, fsdp=1, tensor=1)   # -1: the devices the others leave
    parallel.fsdp_min_size = 2**16                    # arrays smaller than this stay whole
    parallel.rules = (('Dense_\\d+/kernel', (None, 'tensor')),)   # regex -> PartitionSpec

'jit' lays every device of every process out as a Mesh with axes data x fsdp x tensor.
The batch is split over data and fsdp; each array of the train state gets the spec of the
first rule whose pattern `re.search`es its path ('params/Dense_0/kernel',
'opt_state/1/mu/Dense_0/kernel': an optimizer's moments follow their parameter), and then,
if the fsdp axis is used, no rule placed the array over fsdp itself, and the array is a
float with at least `fsdp_min_size` elements, its largest dimension that fsdp divides
(and no rule took) is split over fsdp.
Everything else is replicated. The state is created already split (jit of the init with
output shardings): no device ever holds a whole model it does not need to.

'pmap' is classic data parallelism: a replicated state, each device a slice of the batch,
the gradient and metric sums added over devices with psum, batch statistics averaged.
It is built as jit of shard_map over a 1-D mesh of all devices (which is how jax 0.10
implements `jax.pmap` itself), so that, like 'jit', it takes global arrays and compiles
ahead of time on several hosts too, where `jax.pmap` wants host-local arrays.

Each process feeds only its own slice of the global batch.
"""

import math

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from jaxtrain.errors import UserError, did_you_mean
from jaxtrain import paths


def join_processes(coordinator_address=None, num_processes=None, process_id=None):
  """Starts JAX's multi-process runtime when this is one process of several: when the
  launcher's flags say so, or when JAX detects a SLURM job step or a Cloud TPU VM (it then
  reads the coordinator, process count and index from SLURM_* variables or the TPU
  metadata). Elsewhere (a laptop, one GPU machine) it does nothing. Returns the cluster
  found ('flags', 'slurm', 'gcetpu', 'gketpu') or None."""
  if num_processes == 1 and not coordinator_address:
    return None  # Said to be alone: e.g. one of several independent runs in one SLURM allocation.
  if coordinator_address or num_processes or process_id is not None:
    method = "flags"
  else:
    # Only the environments we document, not every one JAX knows (a Kubernetes pod is not a job).
    from jax._src import clusters  # pylint: disable=import-outside-toplevel  (JAX's own detection)
    found = [c for c in (clusters.SlurmCluster, clusters.GkeTpuCluster, clusters.GceTpuCluster) if c.is_env_present()]
    # A job step of one task (`srun -n1`, several per allocation) is no multi-process run:
    # starting a coordinator on the job's fixed port would clash with its sibling steps.
    if not found or found[0].get_process_count() == 1:
      return None
    method = found[0].name
  # Lets several processes on CPUs run collectives (tests, laptops); GPUs and TPUs ignore it.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id,
                             cluster_detection_method=None if method == "flags" else method)
  return method


AXES = ("data", "fsdp", "tensor")  # Outermost first: data parallelism can cross hosts, tensor should not.
BATCH_AXES = ("data", "fsdp")       # FSDP is data parallelism too: each fsdp shard sees its own examples.


class Strategy:
  """Reads `config.parallel` (a config Reader section) and places arrays accordingly."""

  def __init__(self, config):
    self.kind = config.get("strategy", "jit")
    if self.kind not in ("jit", "pmap"):
      raise UserError(f"parallel.strategy must be 'jit' or 'pmap', got {self.kind!r}")
    sizes = _mesh_sizes(config.section("mesh"), jax.device_count())
    self.fsdp_min_size = config.get("fsdp_min_size", 2**16, minimum=0)
    self.rules = _parse_rules(config.get("rules", ()), sizes)
    if self.kind == "pmap" and (sizes["data"] != jax.device_count() or self.rules):
      raise UserError("parallel.strategy='pmap' replicates the state on every device: it takes no "
                      "parallel.mesh.fsdp, parallel.mesh.tensor or parallel.rules; use strategy 'jit' for those")
    if self.kind == "pmap":
      self.axis_name = "batch"  # pmap's collectives are written out in the step (psum, pmean).
      self.mesh = Mesh(np.array(jax.devices()), ("batch",))
      self.batch_axes = ("batch",)
      self.batch_sharding = NamedSharding(self.mesh, P("batch"))
    else:
      self.axis_name = None  # jit derives its collectives from the shardings.
      self.mesh = jax.make_mesh(tuple(sizes.values()), AXES, axis_types=(AxisType.Auto,) * len(AXES))
      self.batch_axes = BATCH_AXES
      self.batch_sharding = NamedSharding(self.mesh, P(BATCH_AXES))
    self.replicated = NamedSharding(self.mesh, P())

  @property
  def process_index(self):
    return jax.process_index()

  @property
  def process_count(self):
    return jax.process_count()

  @property
  def batch_shards(self):
    """Into how many parts the global batch is split."""
    return math.prod(self.mesh.shape[axis] for axis in self.batch_axes)

  def describe(self):
    if self.kind == "pmap":
      return f"pmap over {self.batch_shards} devices"
    return "jit on a mesh " + " x ".join(f"{name}={size}" for name, size in self.mesh.shape.items())

  def check_batch_size(self, batch_size, key, multiple_of=1):
    """`multiple_of`: each part must also split evenly, e.g. into accumulation microbatches."""
    parts = self.batch_shards * multiple_of
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0 or batch_size % parts:
      over = (f"{self.batch_shards} devices" if self.batch_shards == jax.device_count()
              else f"{self.batch_shards} batch shards (parallel.mesh data x fsdp)")
      over += f" x {multiple_of} microbatches" if multiple_of > 1 else ""
      raise UserError(f"{key}={batch_size!r} cannot be split evenly over {over}; use a positive multiple of {parts}")

  # ---- Batches --------------------------------------------------------------------------

  def shard(self, local_batch):
    """This process's numpy batch -> global jax.Arrays split over the batch axes."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.batch_sharding, x), local_batch)

  def abstract_batch(self, local_batch):
    """The global batch's shapes and shardings, given this process's numpy batch."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        (x.shape[0] * self.process_count,) + x.shape[1:], x.dtype, sharding=self.batch_sharding), local_batch)

  # ---- The train state --------------------------------------------------------------------

  def abstract_state(self, create_fn):
    """Shapes, dtypes and shardings of `create_fn()`'s output, computing nothing."""
    shapes = jax.eval_shape(create_fn)
    specs = self.partition_specs(shapes)
    return jax.tree.map(lambda s, spec: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=NamedSharding(self.mesh, spec)),
                        shapes, specs)

  def partition_specs(self, shapes):
    """A PartitionSpec for each array of `shapes`, by the rules and FSDP (see the module doc)."""
    if self.kind == "pmap":
      return jax.tree.map(lambda _: P(), shapes)
    rule_of = paths.match(shapes, [pattern for pattern, _ in self.rules], "parallel.rules", " of the train state")

    def spec_of(path, leaf, i):
      name = paths.name_of(path)
      spec = [None] * len(leaf.shape) if i < 0 else _fit(self.rules[i][1], leaf.shape, name, i, self.mesh.shape)
      fsdp = self.mesh.shape["fsdp"]
      ruled_fsdp = "fsdp" in _axes_of(spec)  # The rule placed it itself.
      if (fsdp > 1 and not ruled_fsdp and np.issubdtype(leaf.dtype, np.floating)
          and math.prod(leaf.shape) >= self.fsdp_min_size):
        free = [d for d in range(len(spec)) if spec[d] is None and leaf.shape[d] % fsdp == 0]
        if free:
          spec[max(free, key=lambda d: leaf.shape[d])] = "fsdp"
      return P(*spec)

    specs = jax.tree_util.tree_map_with_path(spec_of, shapes, rule_of)
    return specs

  def init(self, create_fn, abstract_state):
    """Runs `create_fn()` jitted, each output created directly in its sharding."""
    return jax.jit(create_fn, out_shardings=_shardings(abstract_state))()

  def bytes_per_device(self, abstract_state):
    """The bytes of `abstract_state` each device holds (shards are even: all hold as many)."""
    return sum(math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
               for leaf in jax.tree.leaves(abstract_state))

  # ---- Compiled steps ------------------------------------------------------------------------

  def compile_train_step(self, step_fn, abstract_state, local_batch):
    """`step_fn(state, batch) -> (state, metrics)`, compiled ahead of time for these shapes
    (it cannot recompile in the loop; a mismatch fails now), the state donated."""
    if self.kind == "pmap":
      fn = jax.jit(self._per_device(step_fn), donate_argnums=0)
    else:
      fn = jax.jit(step_fn, out_shardings=(_shardings(abstract_state), self.replicated), donate_argnums=0)
    return fn.lower(abstract_state, self.abstract_batch(local_batch)).compile()

  def compile_eval(self, fn, abstract_variables, local_batch):
    """`fn(variables, batch) -> outputs` (sums, or per-example arrays), compiled ahead of
    time. Evaluation never needs pmap's explicit collectives: with either strategy it is a
    jit on the same devices whose outputs come back replicated, whole on every process
    (sums added over the devices; per-example arrays gathered)."""
    fn = jax.jit(fn, out_shardings=self.replicated)
    return fn.lower(abstract_variables, self.abstract_batch(local_batch)).compile()

  def _per_device(self, fn):
    """pmap's form: `fn` runs on each device with the whole state and its slice of the
    batch; what it returns must be the same on every device (psum'd), and is kept once."""
    # check_vma=False: classic pmap semantics, where gradients stay per device until the
    # step's own psum (with it, JAX would already sum the gradients of replicated params).
    return jax.shard_map(fn, mesh=self.mesh, in_specs=(P(), P(self.axis_name)), out_specs=P(), check_vma=False)


def _shardings(abstract):
  return jax.tree.map(lambda s: s.sharding, abstract)


def _mesh_sizes(config, device_count):
  """{'data': n, 'fsdp': n, 'tensor': n} from parallel.mesh, its one -1 resolved."""
  defaults = {"data": -1, "fsdp": 1, "tensor": 1}
  unknown = sorted(set(config.keys()) - set(defaults))
  if unknown:
    raise UserError(f"unknown config key 'parallel.mesh.{unknown[0]}'{did_you_mean(unknown[0], AXES, 'parallel.mesh.')}; "
                    f"the mesh axes are data, fsdp and tensor")
  sizes = {axis: config.get(axis, default) for axis, default in defaults.items()}
  if any(size == 0 or size < -1 for size in sizes.values()):
    raise UserError(f"parallel.mesh sizes must be positive, or -1 for the rest of the devices; got {_show(sizes)}")
  free = [axis for axis, size in sizes.items() if size == -1]
  if len(free) > 1:
    raise UserError(f"parallel.mesh has -1 on {' and '.join(free)}; at most one axis may take the rest of the "
                    f"devices, e.g. --config.parallel.mesh.data=1 --config.parallel.mesh.fsdp=-1")
  fixed = math.prod(size for size in sizes.values() if size != -1)
  if free and device_count % fixed == 0:
    sizes[free[0]] = device_count // fixed
  if math.prod(sizes.values()) != device_count:
    fix = f"make {fixed} divide {device_count}" if free else f"make the sizes multiply to {device_count}, or set one to -1"
    raise UserError(f"parallel.mesh {_show(sizes)} needs {'a multiple of ' if free else ''}{fixed} devices; "
                    f"there are {device_count}: {fix}")
  return sizes


def _show(sizes):
  return "(" + ", ".join(f"{axis}={size}" for axis, size in sizes.items()) + ")"


def _parse_rules(rules, sizes):
  """parallel.rules: ((regex, spec), ...), each spec a tuple of mesh axes, None, or tuples of axes."""
  parsed = []
  for i, rule in enumerate(rules):
    if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)
            and isinstance(rule[1], (tuple, list))):
      raise UserError(f"parallel.rules[{i}] must be (regex, spec) with spec a tuple like (None, 'tensor'), got {rule!r}")
    axes = _axes_of(rule[1])
    for axis in axes:
      if axis not in sizes:
        raise UserError(f"parallel.rules[{i}] names axis {axis!r}; the mesh axes are {', '.join(AXES)}")
    if len(set(axes)) < len(axes):
      raise UserError(f"parallel.rules[{i}] uses a mesh axis twice in {tuple(rule[1])!r}; an axis can split "
                      f"only one dimension")
    parsed.append((rule[0], tuple(tuple(e) if isinstance(e, list) else e for e in rule[1])))
  paths.compile_patterns([pattern for pattern, _ in parsed], "parallel.rules")
  return parsed


def _axes_of(spec):
  """The mesh axes a spec names: ('fsdp', None, ('data', 'tensor')) -> ['fsdp', 'data', 'tensor']."""
  return [axis for entry in spec for axis in (entry if isinstance(entry, (tuple, list)) else (entry,))
          if axis is not None]


def _fit(spec, shape, name, i, mesh_shape):
  """Rule `i`'s spec for the array `name`, checked against its shape: a list, one entry a dim."""
  if len(spec) > len(shape):
    raise UserError(f"parallel.rules[{i}] gives {len(spec)} axes to {name}, which has {len(shape)} dimensions "
                    f"{tuple(shape)}")
  for d, entry in enumerate(spec):
    parts = math.prod(mesh_shape[a] for a in (entry if isinstance(entry, tuple) else (entry,)) if a is not None)
    if shape[d] % parts:
      raise UserError(f"parallel.rules[{i}] splits dimension {d} of {name} {tuple(shape)} into {parts} parts, "
                      f"which does not divide {shape[d]}; change the rule or the mesh")
  return list(spec) + [None] * (len(shape) - len(spec))
