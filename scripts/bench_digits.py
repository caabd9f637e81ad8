"""Training speed of the digits CNN on this machine: jaxtrain against a bare JAX loop and PyTorch.

Steps/s of the digits CNN (experiments/digits.py) under jaxtrain, a bare JAX loop, PyTorch
eager and torch.compile, and of candidate ways to speed up XLA:CPU (`--digits_variants`),
measured interleaved (the contenders take turns, round after round; medians, and ratios
within a round), each in a process of its own with its own XLA_FLAGS (the machinery is
scripts/bench_contenders.py); then (`--digits_profile`) the costliest layers timed alone and
where jaxtrain's step goes. PyTorch is optional: without it its rows are skipped with a note.

    python scripts/bench_digits.py                  # the default variants and the profile
    python scripts/bench_digits.py --quick          # a smoke run of every path, ~25 seconds
    python scripts/bench_digits.py --digits_variants=all --rounds=7

Measured on 2026-11-24 on the machine of scripts/bench_lm.py's docstring, when this was the
digits part of that script.

The digits CNN: closing the gap to PyTorch
------------------------------------------
Earlier figures on this kind of machine had PyTorch at 57-65 steps/s eager and 66-70
compiled, against 47 for jaxtrain and for a bare JAX loop. Today's machine is faster, the
gap the same kind: steps/s (median of 5 rounds of 100 steps), and the ratio to jaxtrain
within each round; in brackets the range over three idle runs of the same day (the full
run, `--digits_variants=all`, and a run of the candidates alone):

  jaxtrain        74.2   1.00               build_lib.build(experiments/digits.py)
  bare            79.7   1.08 [0.98-1.08]   a hand-written jit loop: same as jaxtrain
  torch          120.2   1.62 [1.26-1.62]   PyTorch eager
  torch_compile  114.3   1.54 [1.37-1.54]   torch.compile
  noop           16901   0.06 ms per step of dispatch: nothing to win there
  ynn_off         96.1   1.28 [1.19-1.28]   --xla_cpu_experimental_ynn_fusion_type= (Eigen convs)
  onednn                      [1.20]        + --xla_cpu_use_onednn=true ..._onednn_fusion_type=dot,eltwise:
                                            oneDNN takes the dots only, so = ynn_off
  pool_reshape    91.6   1.24 [1.18-1.24]   max-pool as a max over a reshape
  im2col         115.4   1.58 [1.48-1.58]   conv = 9 shifted slices + one matmul
  im2col_pool    132.4   1.79 [1.75-1.79]   both: ahead of torch eager and compiled in every run
  ynn_off_pool   120.5   1.61 [1.57-1.61]   the flag + the reshape max-pool
  ynn_off_im2col_pool    [1.40-1.41]        im2col on Eigen's dots: worse than on YNNPACK's
  no help: fast_math 0.97, one_thread 1.00, thunk_off 1.00 (XLA now ignores the flag:
  "no longer supported"), bf16 0.97-1.06, matmul_bf16 0.98, rbg dropout masks 0.99,
  nchw 0.85-0.91.

Why (--digits_profile): the costliest layers alone, ms forward / forward+backward:
  conv 32->64 on 8x8:  lax.conv (YNNPACK, the default) 1.75 / 6.51;  Eigen 1.02 / 3.01;
                       im2col + matmul 1.54 / 3.70;  torch conv2d 0.89 / 3.06-3.98
  2x2 max-pool of 64:  nn.max_pool 0.08 / 2.02;  reshape + max 0.09 / 0.90 (0.42 on Eigen);
                       torch max_pool2d 1.21 / 1.47
and jaxtrain's step by kind of op: convolution backward 37%, max-pool backward 22%,
convolution forward 14%, batch norm 10%, optimizer, loss and metrics 4%. So the gap is two
XLA:CPU kernels, not jaxtrain (the bare loop is no faster) and not dispatch (0.06 ms):
  1. YNNPACK's convolution (XLA:CPU's default) takes twice Eigen's time, forward and
     backward: 6.5 against 3.0 ms, 4.2 of them in the kernel gradient (an 8x8-window
     convolution with the batch as its feature dimension);
  2. nn.max_pool's gradient is select-and-scatter, which XLA:CPU runs as a variadic
     reduce-window over 4 iota index arrays, their concatenation and a scatter: 2 ms of a
     13 ms step, where a max over a [B, H/2, 2, W/2, 2, C] reshape costs 0.4-0.9 ms.
Both have rewrites that compute the same function (same parameters; logits within 4e-7;
the max-pool gradients differ only on exact ties, which the ReLU before it zeroes):
im2col_pool makes the step 1.75-1.79x faster, past PyTorch. For jaxtrain (not changed
here): a reshape max-pool in models/cnn.py whenever the stride equals the window, and an
im2col convolution on CPU; failing a code change, --xla_cpu_experimental_ynn_fusion_type=
gives 1.2-1.3x on its own (measure it on the model at hand: it turns YNNPACK off for the
dots too).
"""

import functools
import importlib.util
import os
import re
import statistics
import sys
import time

from bench_contenders import (ROOT, best_ms, interleave, median_ratio, on_off, others_before_start, parser_for,
                              print_breakdown, print_machine, profile_breakdown, start_workers, timed, torch_or_skip,
                              warm_up, with_defaults)

# name: what it is, XLA_FLAGS for its process, and what it changes. 'loop': jaxtrain (the
# step build_lib.build compiles; the default), bare (a hand-written jit loop), torch, noop
# (dispatch alone); 'model': the CNN rewritten (same parameters, same function: see
# make_digits_cnn) and trained by jaxtrain's step; 'dtype', 'precision', 'prng': jaxtrain's
# step with that setting.
YNN_OFF = "--xla_cpu_experimental_ynn_fusion_type="
DIGITS_VARIANTS = {
    "jaxtrain": dict(what="jaxtrain: build_lib.build(experiments/digits.py)"),
    "bare": dict(loop="bare", what="bare JAX loop, the same Flax CNN"),
    "torch": dict(loop="torch", what="PyTorch eager, the same CNN (NCHW)"),
    "torch_compile": dict(loop="torch", compile=True, what="PyTorch, torch.compile of the whole step"),
    "noop": dict(loop="noop", what="a jitted step that only counts: dispatch cost"),
    "ynn_off": dict(flags=YNN_OFF, what="no YNNPACK: XLA's Eigen convolutions and dots"),
    "onednn": dict(flags=f"{YNN_OFF} --xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot,eltwise",
                   what="oneDNN instead of YNNPACK: it takes the dots, Eigen the convs"),
    "fast_math": dict(flags="--xla_cpu_enable_fast_math=true", what="XLA fast math"),
    "one_thread": dict(flags="--xla_cpu_multi_thread_eigen=false", what="single-threaded Eigen"),
    "thunk_off": dict(flags="--xla_cpu_use_thunk_runtime=false", what="the old runtime (XLA ignores the flag now)"),
    "nchw": dict(model=dict(layout="NCHW"), what="activations in NCHW layout"),
    "bf16": dict(dtype="bfloat16", what="model.dtype=bfloat16 (mixed precision)"),
    "matmul_bf16": dict(precision="bfloat16", what="jax.default_matmul_precision('bfloat16')"),
    "rbg": dict(prng="unsafe_rbg", what="dropout masks from the rbg PRNG, not threefry"),
    "pool_reshape": dict(model=dict(pool="reshape"), what="max-pool as a max over a reshape"),
    "im2col": dict(model=dict(conv="im2col"), what="conv as 9 shifted slices + one matmul"),
    "im2col_pool": dict(model=dict(conv="im2col", pool="reshape"), what="im2col + reshape max-pool"),
    "ynn_off_pool": dict(flags=YNN_OFF, model=dict(pool="reshape"), what="Eigen convs + reshape max-pool"),
    "ynn_off_im2col_pool": dict(flags=YNN_OFF, model=dict(conv="im2col", pool="reshape"),
                                what="Eigen dots + im2col + reshape max-pool"),
}
DIGITS_DEFAULT = "jaxtrain,bare,torch,torch_compile,noop,ynn_off,nchw,bf16,pool_reshape,im2col,im2col_pool,ynn_off_pool"

# Defaults of a full run, and of --quick (a smoke run of every path).
FULL = dict(steps=100, rounds=5, digits_variants="default", digits_profile=True)
QUICK = dict(steps=30, rounds=2, digits_variants="jaxtrain,bare,torch,im2col_pool", digits_profile=False)


def parse_args(argv=None):
  parser = parser_for(__doc__, "a smoke run of every path (few variants and steps)")
  parser.add_argument("--digits_variants", help=f"comma list of {', '.join(DIGITS_VARIANTS)}; 'default' "
                                                f"({DIGITS_DEFAULT}) or 'all'")
  parser.add_argument("--steps", type=int, help="timed steps per contender per round (default 100)")
  parser.add_argument("--rounds", type=int, help="rounds (default 5)")
  parser.add_argument("--digits_profile", type=on_off, help="where a digits step's time goes, on|off (default on)")
  return with_defaults(parser.parse_args(argv), FULL, QUICK)


# ---- The CNN, written other ways ---------------------------------------------------------


def digits_config(variant):
  """experiments/digits.py's CNN config (no evaluators), with the variant's model changes."""
  spec = importlib.util.spec_from_file_location("digits", os.path.join(ROOT, "experiments", "digits.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  del c["evals"]
  if "model" in variant:
    c.model.name = "bench_digits_cnn"
    c.model.update(variant["model"])
  if "dtype" in variant:
    c.model.dtype = variant["dtype"]
  return c


def conv3x3(x, kernel, how="lax", layout="NHWC"):
  """A 3x3 'SAME' convolution, kernel [3, 3, C, F]: lax.conv_general_dilated (what nn.Conv
  does), or 'im2col': the patches as 9 shifted slices concatenated on the channel axis, then
  one [B*H*W, 9*C] x [9*C, F] matmul, whose gradients are matmuls and slice-adds rather than
  XLA:CPU convolutions (the kernel's gradient is the costly one: see the layer timings)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  if how == "lax":
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=(layout, "HWIO", layout))
  if layout != "NHWC":
    raise ValueError("the im2col convolution is written for NHWC")
  b, h, w, c = x.shape
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  # Patch channel (dy * 3 + dx) * C + c: the order of kernel.reshape(9 * C, F).
  patches = jnp.concatenate([padded[:, dy:dy + h, dx:dx + w, :] for dy in range(3) for dx in range(3)], axis=-1)
  return (patches.reshape(b * h * w, 9 * c) @ kernel.reshape(9 * c, -1)).reshape(b, h, w, -1)


def max_pool_2x2(x, how="window", layout="NHWC"):
  """A 2x2 max-pool, stride 2: a reduce-window (nn.max_pool; its gradient is select-and-
  scatter, which XLA:CPU runs as a variadic reduce-window over 4 iota index arrays and a
  scatter), or 'reshape': a max over a [B, H/2, 2, W/2, 2, C] view, whose gradient is a
  compare and a select."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  window = (1, 1, 2, 2) if layout == "NCHW" else (1, 2, 2, 1)
  if how == "window":
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, window, "VALID")
  if layout == "NCHW":
    b, c, h, w = x.shape
    return x.reshape(b, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def make_digits_cnn():
  """The CNN of jaxtrain/models/cnn.py as the digits config has it (conv-BN-ReLU twice, one
  2x2 max-pool, dense, dropout, head), with the same parameter tree, written other ways:
  `conv` 'lax' or 'im2col' (see conv3x3), `pool` 'window' or 'reshape' (see max_pool_2x2),
  `layout` 'NHWC' or 'NCHW' (activations transposed once at the start and at the end)."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  class Conv3x3(nn.Module):
    features: int
    how: str
    layout: str
    dtype: str

    @nn.compact
    def __call__(self, x):
      channels = x.shape[1] if self.layout == "NCHW" else x.shape[-1]
      kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, channels, self.features), jnp.float32)
      return conv3x3(x, kernel.astype(self.dtype), self.how, self.layout)

  class DigitsCNN(nn.Module):
    num_classes: int
    features: tuple = (32, 64)
    pool_every: int = 2
    dense: int = 128
    dropout: float = 0.0
    dtype: str = "float32"
    conv: str = "lax"
    pool: str = "window"
    layout: str = "NHWC"

    @nn.compact
    def __call__(self, x, *, train):
      x = x.astype(self.dtype)
      if self.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
      for i, width in enumerate(self.features):
        x = Conv3x3(width, self.conv, self.layout, self.dtype, name=f"Conv_{i}")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, axis=1 if self.layout == "NCHW" else -1,
                         dtype=self.dtype, name=f"BatchNorm_{i}")(x)
        x = nn.relu(x)
        if (i + 1) % self.pool_every == 0:
          x = max_pool_2x2(x, self.pool, self.layout)
      if self.layout == "NCHW":
        x = x.transpose(0, 2, 3, 1)  # Flattened as the NHWC model does: the same Dense_0.
      x = x.reshape((x.shape[0], -1))
      x = nn.relu(nn.Dense(self.dense, dtype=self.dtype)(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
      return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x), {"pre_logits": x}

  return DigitsCNN


# The digits CNN's costliest layers at its shapes (batch 128): conv 32 -> 64 channels on 8x8,
# and the 2x2 max-pool of its 64 channels.
CONV_SHAPES, POOL_SHAPE = ((128, 8, 8, 32), (3, 3, 32, 64)), (128, 8, 8, 64)


def jax_layer_timings():
  """{layer: (forward ms, forward + backward ms)} of each formulation, each jitted alone."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  x, kernel = (jax.random.normal(jax.random.PRNGKey(i), s) for i, s in enumerate(CONV_SHAPES))
  pooled = jax.random.normal(jax.random.PRNGKey(2), POOL_SHAPE)

  def both(f, *args):  # Forward alone; forward and the gradients of every input.
    grad = jax.jit(lambda *a: jax.vjp(f, *a)[1](jnp.ones_like(f(*a))))
    return best_ms(jax.jit(f), *args), best_ms(grad, *args)

  return {"conv 32->64, lax.conv": both(conv3x3, x, kernel),
          "conv 32->64, im2col + matmul": both(functools.partial(conv3x3, how="im2col"), x, kernel),
          "max-pool, reduce-window": both(max_pool_2x2, pooled),
          "max-pool, reshape + max": both(functools.partial(max_pool_2x2, how="reshape"), pooled)}


def torch_layer_timings(torch):
  """The same layers in PyTorch (NCHW), timed the same way."""
  x = torch.randn(CONV_SHAPES[0][0], CONV_SHAPES[0][3], 8, 8, requires_grad=True)
  kernel = torch.randn(64, 32, 3, 3, requires_grad=True)
  pooled = torch.randn(POOL_SHAPE[0], POOL_SHAPE[3], 8, 8, requires_grad=True)
  conv = lambda x, k: torch.nn.functional.conv2d(x, k, padding=1)
  pool = lambda x: torch.nn.functional.max_pool2d(x, 2)

  def both(f, *args):  # Forward alone; forward and the gradients of every input (a ones cotangent).
    def forward_backward(*a):
      out = f(*a)
      return len(torch.autograd.grad(out, a, torch.ones_like(out)))
    with torch.no_grad():
      forward = best_ms(lambda *a: f(*a).numel(), *args)
    return forward, best_ms(forward_backward, *args)

  return {"conv 32->64, torch conv2d": both(conv, x, kernel), "max-pool, torch max_pool2d": both(pool, pooled)}


# ---- Contenders ------------------------------------------------------------------------


def contender(spec):
  """Worker side: one digits contender; (run(steps) -> steps/s, info, profile or None)."""
  variant = DIGITS_VARIANTS[spec["variant"]]
  return (digits_torch if variant.get("loop") == "torch" else digits_jax)(variant)


def digits_jax(variant):
  """A JAX contender: jaxtrain's compiled step (build_lib.build), a bare loop or a no-op step,
  on the digits batches build_lib.build's pipeline gives, kept on the device."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  if "prng" in variant:
    jax.config.update("jax_default_prng_impl", variant["prng"])
  if "precision" in variant:
    jax.config.update("jax_default_matmul_precision", variant["precision"])
  from jaxtrain import config as config_lib  # pylint: disable=import-outside-toplevel
  from jaxtrain import models
  from jaxtrain.training import build as build_lib
  if "model" in variant:
    models.MODELS.register("bench_digits_cnn")(make_digits_cnn())
  exp = build_lib.build(digits_config(variant))
  state = exp.strategy.init(exp.create, exp.abstract_state)
  batches = [exp.strategy.shard(exp.data.train_ds[k]) for k in range(8)]
  info = {}
  if "model" in variant:  # The rewrite computes what jaxtrain's CNN does, on the same variables.
    reference = models.build(config_lib.Reader(digits_config({}).model))
    variables = {"params": state.params, **state.model_state}
    ours = exp.model.module.apply(variables, batches[0]["image"], train=False)[0]
    info["max_diff"] = float(jnp.abs(ours - reference.apply(variables, batches[0]["image"], train=False)[0]).max())
  loop = variant.get("loop", "jaxtrain")
  if loop == "jaxtrain":
    step = exp.train_step
  elif loop == "noop":
    step = jax.jit(lambda state, batch: (state.replace(step=state.step + 1), {}), donate_argnums=0)
  else:
    step, init = bare_digits_step(exp.model.module)
    state = (state.params, state.model_state, init(state.params), jax.random.PRNGKey(1))
  i = 0

  def one():
    nonlocal state, i
    state, out = step(state, batches[i % len(batches)])
    i += 1
    return out if loop != "noop" else state.step

  timed(one, 5)  # Compile, warm up.

  def profile():
    out = {"layers": jax_layer_timings()}
    if loop == "jaxtrain":
      out["trace"] = profile_breakdown(exp.train_step, one, op_group)
    return out

  return (lambda steps: steps / timed(one, steps)), info, profile


def bare_digits_step(module):
  """(step, init): step(carry, batch) -> (carry, loss), carry = (params, batch_stats,
  opt_state, rng); the same Flax CNN, optax's clip + adamw, mean cross-entropy, no metrics;
  init(params) -> opt_state."""
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(3e-3, weight_decay=1e-4))

  @functools.partial(jax.jit, donate_argnums=0)
  def step(carry, batch):
    params, model_state, opt_state, rng = carry
    rng, dropout_rng = jax.random.split(rng)

    def loss_fn(p):
      (logits, _), new_state = module.apply({"params": p, **model_state}, batch["image"], train=True,
                                            rngs={"dropout": dropout_rng}, mutable=list(model_state))
      return optax.softmax_cross_entropy(logits, batch["labels"]).mean(), new_state

    (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), model_state, opt_state, rng), loss

  return step, tx.init


def digits_torch(variant):
  """The digits CNN in PyTorch (eager or torch.compile) on the same batches."""
  torch = torch_or_skip(transformers=False)
  from torch import nn  # pylint: disable=import-outside-toplevel
  from jaxtrain import config as config_lib  # pylint: disable=import-outside-toplevel
  from jaxtrain import data
  cfg = config_lib.Reader(digits_config({}))
  ds = data.pipeline.train_dataset(data.open_from_config(cfg.input.data), preprocess=data.ops.parse(cfg.input.pp),
                                   global_batch_size=cfg.input.batch_size, seed=0)
  batches = [(torch.as_tensor(ds[k]["image"]).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(ds[k]["labels"]))
             for k in range(8)]

  class CNN(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv0, self.bn0 = nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32, momentum=0.1)
      self.conv1, self.bn1 = nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64, momentum=0.1)
      self.dense, self.drop, self.head = nn.Linear(64 * 4 * 4, 128), nn.Dropout(0.1), nn.Linear(128, 10)

    def forward(self, x):
      x = torch.relu(self.bn0(self.conv0(x)))
      x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
      return self.head(self.drop(torch.relu(self.dense(x.flatten(1)))))

  torch.manual_seed(0)
  net = CNN().train()
  opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)

  def train_step(images, labels):
    loss = nn.functional.cross_entropy(net(images), labels)  # One-hot labels, as in JAX.
    loss.backward()
    nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  if variant.get("compile"):
    train_step = torch.compile(train_step)
  i = 0

  def run(steps):
    nonlocal i
    start = time.perf_counter()
    for _ in range(steps):
      loss = train_step(*batches[i % len(batches)])
      i += 1
    loss.item()
    return steps / (time.perf_counter() - start)

  warm_up(lambda: run(5), compiled=variant.get("compile"))  # Compile, warm up.
  return run, {}, lambda: {"layers": torch_layer_timings(torch)}


# ---- Where the time goes -----------------------------------------------------------------


def op_group(name, op):
  """What an XLA op of the digits step computes, from its name and op_name."""
  phase = " backward" if "transpose(" in op else " forward" if "jvp(" in op else ""
  if "/Conv_" in op:
    return "convolutions" + phase
  if re.search(r"reduce_window|select_and_scatter|reduce_max", op):
    return "max-pool" + phase
  # nn.max_pool's gradient also makes 4 iota index arrays and their concatenation, and
  # zeros to scatter into: fusions without an op_name of their own.
  if not op and re.match(r"wrapped_(iota|reduce-window|broadcast)|concatenate_bitcast_fusion", name):
    return "max-pool backward"
  if "/BatchNorm_" in op:
    return "batch norm" + phase
  if "/Dense_0/" in op or "/head/" in op:
    return "dense layers" + phase
  if "Dropout" in op or name.startswith("while"):
    return "dropout masks (RNG)"
  if name.startswith("SlinkyThreadPool"):
    return "waiting on YNNPACK's threads"
  return ("other" + phase) if phase else "optimizer, loss, metrics"


def print_digits_profiles(profiles):
  """Layer timings of each library, and the trace of jaxtrain's step by kind of op."""
  print("\nthe digits CNN's costliest layers alone, jitted (batch 128; ms per call, best of 5 x 30 calls):")
  print(f"{'layer':44} {'forward':>8} {'fwd+bwd':>8}")
  for name, profile in profiles.items():
    for layer, (forward, both) in profile.get("layers", {}).items():
      where = " [no YNNPACK]" if name == "ynn_off" else ""
      print(f"{layer + where:44} {forward:8.2f} {both:8.2f}")
  trace = profiles.get("jaxtrain", {}).get("trace")
  if trace:
    print_breakdown("jaxtrain", trace)


# ---- Main --------------------------------------------------------------------------------


def digits_names(text):
  names = list(DIGITS_VARIANTS) if text == "all" else (DIGITS_DEFAULT if text == "default" else text).split(",")
  unknown = [n for n in names if n not in DIGITS_VARIANTS]
  if unknown:
    raise SystemExit(f"unknown digits variant(s) {', '.join(unknown)}; known: {', '.join(DIGITS_VARIANTS)}")
  return ["jaxtrain"] + [n for n in names if n != "jaxtrain"]  # The reference of every ratio comes first.


def bench_digits(args):
  """Steps/s of every digits contender, each in its own process; the profiles if asked."""
  names = digits_names(args.digits_variants)
  print(f"\ndigits CNN, batch 128: building {len(names)} contenders, each in its own process...", flush=True)
  specs = {name: (dict(variant=name), DIGITS_VARIANTS[name].get("flags", "")) for name in names}
  workers, infos, notes = start_workers("bench_digits", specs)
  profiles = {}
  try:
    rates = interleave({name: w.run for name, w in workers.items()}, args.rounds, args.steps,
                       "steps/s", [w.process.pid for w in workers.values()])
    if args.digits_profile:  # After the rounds: the timings above ran undisturbed.
      profiles = {name: workers[name].ask("profile") for name in ("jaxtrain", "ynn_off", "torch") if name in workers}
  finally:
    for worker in workers.values():
      worker.close()

  print(f"\ndigits CNN, batch 128 ({args.rounds} rounds of {args.steps} steps, median; the ratio "
        f"to jaxtrain within each round, median; max|dlogits|: a rewritten model against jaxtrain's CNN)")
  print(f"{'contender':20} {'steps/s':>8} {'ms/step':>8} {'vs jaxtrain':>11} {'max|dlogits|':>12}  what")
  for name, values in rates.items():
    variant, rate = DIGITS_VARIANTS[name], statistics.median(values)
    diff = f"{infos[name]['max_diff']:12.1e}" if "max_diff" in infos[name] else f"{'':12}"
    flags = f" [{variant['flags']}]" if variant.get("flags") else ""
    print(f"{name:20} {rate:8.1f} {1000 / rate:8.2f} {median_ratio(rates, name, 'jaxtrain'):11.3f} {diff}  "
          f"{variant['what']}{flags}")
  for note in notes:
    print(f"  note: {note}")
  if profiles:
    print_digits_profiles(profiles)
  return rates


def main(argv=None):
  args = parse_args(argv)
  digits_names(args.digits_variants)  # Fails now on a typo, not after the machine's header.
  busy = others_before_start()
  start = time.perf_counter()
  print_machine(busy)
  bench_digits(args)
  print(f"\ntotal {time.perf_counter() - start:.0f}s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
