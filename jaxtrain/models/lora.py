"""LoRA adapters on the Dense layers of any Flax Linen model: `config.lora`.

    config.lora = dict(rank=8, alpha=16, dropout=0.05, targets=("q_proj", "v_proj"),
                       base_dtype="bfloat16")   # optional: keep the frozen base in bfloat16

Each `nn.Dense` whose kernel name ('params/layers_0/self_attn/q_proj/kernel'; regexes
searched, as everywhere in jaxtrain.paths) a target matches computes

    y = x W + (dropout(x) A B) * alpha / rank       A [in, rank], B [rank, out]

PEFT's LoRA exactly (its lora_A.weight is A.T, lora_B.weight B.T): A starts as PEFT's
kaiming-uniform (U(-1/sqrt(in), 1/sqrt(in))), B at zero, so step 0 computes the base model
bit for bit. The adapters live beside the kernel they adapt ('.../q_proj/lora_A',
'.../q_proj/lora_B'), stacked like it under scan_layers. Only they train: every other
param is frozen (optimizer.freeze's machinery: no gradient, no optimizer state, unchanged
bit for bit). `dropout` acts on the adapter's input, in training only.

The model needs no LoRA code: `LoRAModel` wraps the module and runs its init and apply
under `nn.intercept_methods`, which adds the adapter to the targeted Dense calls (a proxy,
not a Linen parent module, so the param names stay the base model's and init_from,
parallel.rules and the HF names all still apply). `merge` folds the adapters into the
kernels for inference and export.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtrain.errors import UserError
from jaxtrain import paths

ADAPTERS = ("lora_A", "lora_B")
# PEFT's default init of lora_A: kaiming_uniform(a=sqrt(5)), i.e. U(+-1/sqrt(fan_in)).
_INIT_A = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


@dataclasses.dataclass(frozen=True)
class Spec:
  """What config.lora asks for, and the kernel names its targets matched."""
  rank: int
  alpha: float
  dropout: float
  targets: tuple         # The regexes, as configured.
  kernels: tuple         # 'params/.../kernel' of each adapted Dense.
  base_dtype: str | None = None

  @property
  def scale(self):
    return self.alpha / self.rank


def wrap(section, module, example_inputs):
  """`module` with the adapters of `section` (config.lora, a Reader), or `module` itself
  where the config has no lora section. Every mistake is one UserError line."""
  if not section.keys():
    return module
  rank = section.get("rank", 8, kind=int, minimum=1)
  alpha = section.get("alpha", float(rank), kind=float)
  dropout = section.get("dropout", 0.0, kind=float)
  if not 0 <= dropout < 1:
    raise UserError(f"config key '{section.path('dropout')}' must be a rate in [0, 1), got {dropout!r}")
  if not alpha > 0:
    raise UserError(f"config key '{section.path('alpha')}' must be positive, got {alpha!r}")
  targets = section.get("targets", kind=object)
  targets = (targets,) if isinstance(targets, str) else targets
  if not targets or not isinstance(targets, (tuple, list)) or not all(isinstance(t, str) for t in targets):
    raise UserError(f"config key '{section.path('targets')}' must be a tuple of regexes over Dense kernel names "
                    f"like ('q_proj', 'v_proj'), got {targets!r}")
  base_dtype = section.get("base_dtype", kind=str)
  if base_dtype is not None and base_dtype not in ("float32", "bfloat16", "float16"):
    raise UserError(f"config key '{section.path('base_dtype')}' must be 'float32', 'bfloat16' or 'float16', "
                    f"got {base_dtype!r}")
  kernels = dense_kernels(module, example_inputs)
  if not kernels:
    raise UserError(f"config key '{section.path('targets')}': the model has no nn.Dense layer for LoRA to adapt")
  chosen = paths.match(dict.fromkeys(kernels, 0), list(targets), section.path("targets"), " of the Dense kernels")
  spec = Spec(rank=rank, alpha=float(alpha), dropout=float(dropout), targets=tuple(targets),
              kernels=tuple(k for k in kernels if chosen[k] >= 0), base_dtype=base_dtype)
  return LoRAModel(module, spec)


def dense_kernels(module, example_inputs):
  """The kernel names of `module`'s nn.Dense layers, in call order (shapes only, no FLOPs)."""
  seen = {}

  def record(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and isinstance(context.module, nn.Dense):
      seen[_kernel_name(context.module)] = True
    return next_fun(*args, **kwargs)

  args, kwargs = example_inputs
  with nn.intercept_methods(record):
    jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args, **kwargs, train=False))
  return list(seen)


def _kernel_name(dense):
  return "params/" + "/".join(dense.path) + "/kernel"


def is_adapter(name):
  return name.rsplit("/", 1)[-1] in ADAPTERS


class LoRAModel:
  """A Linen module with adapters on the Dense layers of `spec.kernels`: `init`, `apply`
  and `clone` as the module's, every other attribute (vocab_size, init_cache, ...) the
  base module's own."""

  def __init__(self, base, spec):
    self.base, self.spec = base, spec

  def __getattr__(self, name):
    if name.startswith("__") or name in ("base", "spec"):
      raise AttributeError(name)
    return getattr(self.base, name)

  def __repr__(self):
    return f"LoRAModel({self.base!r}, rank={self.spec.rank}, alpha={self.spec.alpha}, {len(self.spec.kernels)} kernels)"

  def clone(self, **kwargs):
    return LoRAModel(self.base.clone(**kwargs), self.spec)

  @property
  def splits_head(self):
    """The base's (models/__init__.py), unless an adapter is on the lm_head: `unembed` reads
    the kernel alone."""
    on_head = any(k.endswith("/lm_head/kernel") for k in self.spec.kernels)
    return getattr(self.base, "splits_head", False) and not on_head

  def init(self, rngs, *args, **kwargs):
    with nn.intercept_methods(self._adapter(train=False)):
      variables = self.base.init(rngs, *args, **kwargs)
    if not self.spec.base_dtype:
      return variables
    dtype = jnp.dtype(self.spec.base_dtype)
    cast = lambda path, x: x if is_adapter(paths.name_of(path)) or not jnp.issubdtype(x.dtype, jnp.floating) \
        else x.astype(dtype)  # noqa: E731
    return {**variables, "params": jax.tree_util.tree_map_with_path(cast, variables["params"])}

  def apply(self, variables, *args, **kwargs):
    with nn.intercept_methods(self._adapter(train=bool(kwargs.get("train", False)))):
      return self.base.apply(variables, *args, **kwargs)

  def _adapter(self, train):
    spec, targets = self.spec, set(self.spec.kernels)

    def intercept(next_fun, args, kwargs, context):
      dense = context.module
      if context.method_name != "__call__" or not isinstance(dense, nn.Dense) or _kernel_name(dense) not in targets:
        return next_fun(*args, **kwargs)
      x = args[0] if args else kwargs["inputs"]
      y = next_fun(*args, **kwargs)
      a = dense.param("lora_A", _INIT_A, (x.shape[-1], spec.rank), jnp.float32)
      b = dense.param("lora_B", nn.initializers.zeros, (spec.rank, dense.features), jnp.float32)
      if spec.dropout and train:
        keep = jax.random.bernoulli(dense.make_rng("dropout"), 1 - spec.dropout, x.shape)
        x = jnp.where(keep, x / (1 - spec.dropout), 0).astype(x.dtype)
      dtype = dense.dtype or x.dtype
      # PEFT's order: B(A(x)) * scale. B = 0 gives exactly 0, so y comes out unchanged. On
      # 2-D inputs: B's gradient from [B, T, ...] costs XLA:CPU a transposing copy of the
      # output's gradient (see llama.MLP).
      tokens = x.reshape(-1, x.shape[-1]).astype(dtype)
      delta = ((tokens @ a.astype(dtype)) @ b.astype(dtype)).reshape(y.shape)
      return y + (delta * spec.scale).astype(y.dtype)

    return intercept


def trainable_only(module):
  """For optim.param_groups: a LoRA model trains its adapters alone; None otherwise."""
  return is_adapter if isinstance(module, LoRAModel) else None


def merge(params, scale):
  """The base model's params (float32) with each adapter folded into its kernel:
  W + scale * A B, computed in float32 at full precision (also stacked, under scan)."""

  def walk(tree):
    if not isinstance(tree, dict):
      return tree.astype(jnp.float32) if jnp.issubdtype(tree.dtype, jnp.floating) else tree
    out = {key: walk(value) for key, value in tree.items() if key not in ADAPTERS}
    if "lora_A" in tree:
      a, b = (tree[k].astype(jnp.float32) for k in ADAPTERS)
      out["kernel"] = out["kernel"] + scale * jnp.einsum("...ir,...ro->...io", a, b,
                                                         precision=jax.lax.Precision.HIGHEST)
    return out

  return jax.jit(walk)(dict(params))


def adapters(params):
  """{'params/.../q_proj/kernel': (A, B) as numpy} of a LoRA model's params."""
  flat = dict(paths.named_leaves(params, "params/"))
  return {name.rsplit("/", 1)[0] + "/kernel": (np.asarray(flat[name]), np.asarray(flat[name[:-1] + "B"]))
          for name in flat if name.endswith("/lora_A")}
