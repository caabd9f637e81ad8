"""--mode=dry_run: what a config costs, before anything is spent.

    python -m jaxtrain.launch --config=experiments/code_lm.py --workdir=DIR --mode=dry_run \
        [--accelerator=tpu-v5e] [--peak_tflops=T] [--price_per_hour=P]

Builds and compiles everything as a run would (`training.build`), runs no step and writes
nothing under DIR (it only reads whether a run there would resume). Prints parameters
(total, trainable, per top-level module), FLOPs per step (XLA's cost analysis of the
compiled step; for language models beside the 6N-per-token estimates), memory per device
(XLA's memory analysis against the device's capacity: a step that does not fit is a
UserError after the report) and the whole run's FLOPs, chip-hours and cost on ACCELERATORS.

XLA's analyses are of the program one device runs: FLOPs per step are those times the
number of devices (replicated work, such as a replicated optimizer update, counted on
each device, as the hardware does it).
"""

import math
import os
import re

from absl import logging
import jax

from jaxtrain import config as config_lib
from jaxtrain.errors import UserError, did_you_mean
from jaxtrain.models import lora as lora_lib
from jaxtrain import paths
from jaxtrain.rundir import layout
from jaxtrain.training.accelerators import ACCELERATORS, KINDS
from jaxtrain.training import build as build_lib
from jaxtrain.training import optim

# Of peak, sustained over a run: well-tuned large LM training reaches 35-55% MFU; small
# models, small batches and CPUs reach less. 100% is the floor no run reaches.
TYPICAL_UTILIZATION = 0.4


def run(config, workdir, *, accelerator=None, peak_tflops=None, price_per_hour=None):
  """Builds `config`, prints the report, returns its numbers; writes nothing."""
  target = pick_accelerator(accelerator, peak_tflops, price_per_hour)  # A typo fails before compiling.
  exp = build_lib.build(config, workdir)
  report = measure(exp, workdir, target)
  if jax.process_index() == 0:
    print(format_report(report), flush=True)
  memory = report["memory"]
  capacity, of = (memory["capacity"], memory["capacity_of"]) if memory else (None, None)
  if accelerator and target["memory_gb"] and jax.devices()[0].platform == "cpu":
    # Planning for a named accelerator from a CPU host (a laptop): its memory is the limit.
    capacity, of = int(target["memory_gb"] * 1e9), f"{accelerator}'s memory"
  if memory and memory["total"] > capacity:
    raise UserError(f"does not fit: the train step needs {_bytes(memory['total'])} per device, the device has "
                    f"{_bytes(capacity)} ({of}); shard the state (parallel.mesh.fsdp) or "
                    f"shrink the activations (parallel.accumulate_steps, model.remat where the model has it)")
  return report


def pick_accelerator(name, peak_tflops, price_per_hour):
  """{'name', 'peak_tflops', 'memory_gb', 'price'} the cost estimate is for, or None."""
  if name is not None and name not in ACCELERATORS:
    raise UserError(f"unknown --accelerator '{name}'{did_you_mean(name, ACCELERATORS)}; known: "
                    f"{', '.join(ACCELERATORS)} (or give --peak_tflops and --price_per_hour)")
  if peak_tflops is not None and not peak_tflops > 0:
    raise UserError(f"--peak_tflops must be positive, got {peak_tflops}")
  if price_per_hour is not None and not price_per_hour >= 0:
    raise UserError(f"--price_per_hour must be at least 0, got {price_per_hour}")
  name = name or KINDS.get(jax.devices()[0].device_kind)
  if name is None and peak_tflops is None:
    if price_per_hour is not None:
      raise UserError("--price_per_hour needs --accelerator=NAME or --peak_tflops: the hours depend on the "
                      "device's peak")
    return None
  peak, memory_gb, price = ACCELERATORS.get(name, (None, None, None))
  return dict(name=name or "the flags' device", memory_gb=memory_gb,
              from_flags=peak_tflops is not None or price_per_hour is not None,
              peak_tflops=peak if peak_tflops is None else peak_tflops,
              price=price if price_per_hour is None else price_per_hour)


def device_capacity():
  """(bytes one device holds, what that is): the accelerator's own limit, or on CPUs the
  host's physical memory, which its CPU devices share."""
  device = jax.local_devices()[0]
  try:
    stats = device.memory_stats() or {}
  except Exception:  # pylint: disable=broad-except  (not every backend implements it)
    stats = {}
  if stats.get("bytes_limit"):
    return int(stats["bytes_limit"]), f"{device.device_kind} memory"
  count = jax.local_device_count()
  host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return host // count, "the host's memory" + (f" / {count} CPU devices" if count > 1 else "")


# ---- Measuring ------------------------------------------------------------------------------


def measure(exp, workdir, target):
  devices = jax.device_count()
  per_device = _cost(exp.train_step)
  per_step = per_device * devices if per_device else None
  tokens = exp.tokens_per_example
  parameters = _parameters(exp)
  report = dict(model=exp.model.name, strategy=exp.strategy.describe(), devices=devices,
                device_kind=jax.devices()[0].device_kind, batch_size=exp.data.batch_size,
                total_steps=exp.total_steps, parameters=parameters,
                flops=dict(per_device=per_device, per_step=per_step),
                memory=_memory(exp), resume_step=_newest_checkpoint(workdir))
  if tokens:  # A language model: the estimates per token, for the global batch.
    report["flops"].update(_estimates(exp, parameters["total"], tokens))
  # XLA's cost analysis counts a loop's body once: with model.scan_layers the compiled step
  # shows one layer of L (a 7B Llama's 32: 4.1 TFLOP against 86 estimated), so the whole run
  # is costed from the estimate.
  module = getattr(exp.model.module, "base", exp.model.module)  # A LoRA model's own.
  report["flops"]["scanned"] = getattr(module, "scan_layers", False) is True
  basis = per_step if per_step and not report["flops"]["scanned"] else None
  basis = basis or report["flops"].get("six_n_attention")
  report["run"] = _whole_run(basis * exp.total_steps, target) if basis else None
  return report


def _cost(compiled):
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # Older JAX: one dict per program.
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def _parameters(exp):
  """Counts by top-level module (the first name under params), trainable ones apart."""
  params = exp.abstract_state.params
  frozen = _frozen(exp)
  modules = {}
  for name, leaf in paths.named_leaves(params):
    count = math.prod(leaf.shape)
    row = modules.setdefault(name.split("/")[0], dict(count=0, trainable=0, bytes=0))
    row["count"] += count
    row["trainable"] += 0 if frozen.get("params/" + name) else count
    row["bytes"] += count * leaf.dtype.itemsize
  total = sum(row["count"] for row in modules.values())
  return dict(total=total, trainable=sum(row["trainable"] for row in modules.values()),
              bytes=sum(row["bytes"] for row in modules.values()), modules=modules)


def _frozen(exp):
  """optimizer.freeze and LoRA, read as `training.build` read them (its log line not repeated)."""
  absl_logger = logging.get_absl_logger()
  disabled, absl_logger.disabled = absl_logger.disabled, True
  try:
    groups = optim.param_groups(config_lib.Reader(exp.config).optimizer, exp.abstract_state.params,
                                trainable_only=lora_lib.trainable_only(exp.model.module))
  finally:
    absl_logger.disabled = disabled
  return groups.frozen


def _estimates(exp, n, tokens_per_example):
  """6N per token (N: every parameter), PaLM's 6N + 12 L H Q T (attention's QK^T and PV over
  the whole T x T square, which the compiled step computes whatever the causal mask), and
  the model's own count (MFU's) where it has one: for Llama, Kaplan et al.'s 6N + 6 L H Q T
  (their Table 1's context term, the causal half of the square) with N its matmul weights."""
  tokens = exp.data.batch_size * tokens_per_example
  out = dict(tokens_per_step=tokens, seq_len=tokens_per_example, six_n=6 * n * tokens)
  shape = [getattr(exp.model.module, key, None) for key in ("num_layers", "num_heads", "head_size")]
  if all(isinstance(x, int) for x in shape):
    out["attention_shape"] = shape
    out["six_n_attention"] = (6 * n + 12 * math.prod(shape) * tokens_per_example) * tokens
  if exp.flops_per_example:
    out["model_count"] = exp.flops_per_example * exp.data.batch_size
  return out


def _memory(exp):
  """Bytes per device: the step's arguments (state and batch), its outputs that do not
  reuse a donated input, its temporaries (activations, gradients, workspace) and code."""
  analysis = exp.train_step.memory_analysis()
  if analysis is None:
    return None
  state, batch = exp.abstract_state, exp.strategy.abstract_batch(exp.data.first_batch)
  shard = lambda tree: sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize  # noqa: E731
                           for x in jax.tree.leaves(tree))
  parts = dict(params=shard(state.params), opt_state=shard(state.opt_state),
               other_state=shard(state) - shard(state.params) - shard(state.opt_state), batch=shard(batch),
               arguments=analysis.argument_size_in_bytes,
               outputs=max(analysis.output_size_in_bytes - analysis.alias_size_in_bytes, 0),
               temporaries=analysis.temp_size_in_bytes, code=analysis.generated_code_size_in_bytes)
  parts["total"] = parts["arguments"] + parts["outputs"] + parts["temporaries"] + parts["code"]
  parts["capacity"], parts["capacity_of"] = device_capacity()
  return parts


def _whole_run(total_flops, target):
  """Device-hours and cost on each accelerator, at its peak and at TYPICAL_UTILIZATION."""
  def on(peak_tflops, price):
    hours = total_flops / (peak_tflops * 1e12) / 3600
    return dict(hours_at_peak=hours, hours=hours / TYPICAL_UTILIZATION,
                cost=None if price is None else hours / TYPICAL_UTILIZATION * price,
                cost_at_peak=None if price is None else hours * price)
  table = {name: dict(peak_tflops=peak, memory_gb=gb, price=price, **on(peak, price))
           for name, (peak, gb, price) in ACCELERATORS.items()}
  chosen = dict(target, **on(target["peak_tflops"], target["price"])) if target else None
  return dict(total_flops=total_flops, accelerators=table, target=chosen)


def _newest_checkpoint(workdir):
  return layout.newest_complete_step(workdir) if workdir else None


# ---- The report --------------------------------------------------------------------------------


def format_report(r):
  p, f, m, w = r["parameters"], r["flops"], r["memory"], r["run"]
  devices = f"{r['devices']} {r['device_kind']} device" + ("s" if r["devices"] > 1 else "")
  lines = [f"Dry run of {r['model']}: nothing was trained or written.",
           f"{r['strategy']}, {devices}; global batch {r['batch_size']:,}; {r['total_steps']:,} steps.", "",
           f"Parameters: {p['total']:,} ({p['trainable']:,} trainable, {p['total'] - p['trainable']:,} frozen), "
           f"{_bytes(p['bytes'])}"]
  rows = [(name, f"{row['count']:,}", f"{100 * row['count'] / max(p['total'], 1):.1f}%", f"{row['trainable']:,}",
           _bytes(row["bytes"])) for name, row in _runs_of_layers(p["modules"])]
  rows.append(("total", f"{p['total']:,}", "100.0%", f"{p['trainable']:,}", _bytes(p["bytes"])))
  lines += _table(("module", "parameters", "share", "trainable", "bytes"), rows)

  tokens = f", {f['tokens_per_step']:,} tokens" if "tokens_per_step" in f else ""
  lines += ["", f"FLOPs per step (global batch of {r['batch_size']:,} examples{tokens}):"]
  compiled = f["per_step"]
  ratio = lambda x: f"compiled / this = {compiled / x:.3f}" if compiled else ""  # noqa: E731
  rows = [("compiled step (XLA cost analysis, "
           f"{r['devices']} x {_flops(f['per_device'])})" if compiled else "compiled step", _flops(compiled), "")]
  if "six_n" in f:
    rows.append((f"6N per token, N = {p['total']:,} (all parameters)", _flops(f["six_n"]), ratio(f["six_n"])))
  if "six_n_attention" in f:
    layers, heads, head_dim = f["attention_shape"]
    rows.append((f"6N + 12*L*H*Q*T per token (PaLM; L={layers} H={heads} Q={head_dim} T={f['seq_len']})",
                 _flops(f["six_n_attention"]), ratio(f["six_n_attention"])))
  if "model_count" in f:
    rows.append(("6N + 6*L*H*Q*T per token (Kaplan; causal half; MFU's count)",
                 _flops(f["model_count"]), ratio(f["model_count"])))
  lines += _table(None, rows)
  if f.get("scanned") and compiled:
    lines += ["  (model.scan_layers: XLA counts the scanned layers' loop body once, so the compiled step shows "
              "one layer;", "  the whole run is costed from the 6N + attention estimate)"]

  lines += ["", "Memory per device (XLA memory analysis of the compiled train step):"]
  if m is None:
    lines.append("  not reported by this backend")
  else:
    rows = [("parameters", _bytes(m["params"])), ("optimizer state", _bytes(m["opt_state"])),
            ("other state (step, RNG, batch statistics)", _bytes(m["other_state"])),
            ("batch", _bytes(m["batch"])), ("= arguments of the step", _bytes(m["arguments"])),
            ("outputs not written over donated inputs", _bytes(m["outputs"])),
            ("temporaries (activations, gradients, workspace)", _bytes(m["temporaries"])),
            ("generated code", _bytes(m["code"])), ("total", _bytes(m["total"]))]
    lines += _table(None, rows)
    verdict = "fits" if m["total"] <= m["capacity"] else "DOES NOT FIT"
    lines.append(f"  capacity {_bytes(m['capacity'])} ({m['capacity_of']}): {verdict}, "
                 f"{100 * m['total'] / m['capacity']:.1f}% of it")

  if w is None:
    return "\n".join(lines + ["", "Whole run: no FLOP count (the backend reports none and the model has no estimate)."])
  basis = "compiled step" if compiled and not f.get("scanned") else "6N + attention estimate"
  resume = (f"; {r['total_steps'] - r['resume_step']:,} steps left after checkpoint {r['resume_step']} in --workdir"
            if r["resume_step"] is not None else "")
  run_tokens = f", {r['total_steps'] * f['tokens_per_step']:,} tokens" if "tokens_per_step" in f else ""
  lines += ["", f"Whole run: {r['total_steps']:,} steps x {_flops(w['total_flops'] / r['total_steps'])} ({basis}) "
                f"= {_flops(w['total_flops'])}{run_tokens}; evaluations not counted{resume}.",
            f"Device time (chip-hours) at the accelerator's peak and at {TYPICAL_UTILIZATION:.0%} of it; cost at "
            f"{TYPICAL_UTILIZATION:.0%},", "in approximate on-demand USD per chip-hour (2026 list prices):"]
  t = w["target"]
  rows = [(("* " if t and name == t["name"] else "  ") + name, f"{a['peak_tflops']:g}", f"{a['memory_gb']} GB",
           f"${a['price']:.2f}", _duration(a["hours_at_peak"]), _duration(a["hours"]), _money(a["cost"]))
          for name, a in w["accelerators"].items()]
  lines += _table(("accelerator", "bf16 TFLOP/s", "memory", "$/chip-h", "at peak",
                   f"at {TYPICAL_UTILIZATION:.0%}", f"cost at {TYPICAL_UTILIZATION:.0%}"), rows)
  if t is None:
    lines.append("Pick one with --accelerator=NAME, or give --peak_tflops and --price_per_hour.")
    return "\n".join(lines)
  price = f", ${t['price']:.2f} per chip-hour" if t["price"] is not None else ", no price given"
  cost = f": {_money(t['cost_at_peak'])} to {_money(t['cost'])}" if t["price"] is not None else ""
  flags = " with the flags' figures" if t["from_flags"] and t["name"] in ACCELERATORS else ""
  lines += ["", f"On {t['name']}{flags} ({t['peak_tflops']:g} TFLOP/s per chip{price}): "
                f"{_duration(t['hours_at_peak'])} to {_duration(t['hours'])} of chip time{cost}",
            "(on N chips 1/N of the time, at the same cost, if the step scales)."]
  if m is not None and t["memory_gb"]:
    fits = "fits" if m["total"] <= t["memory_gb"] * 1e9 else "does not fit"
    lines += [f"Its {t['memory_gb']} GB per chip: the step's {_bytes(m['total'])} per device {fits} (as compiled "
              f"here, for {r['device_kind']};", "XLA lays memory out differently on each backend)."]
  return "\n".join(lines)


def _runs_of_layers(modules):
  """(name, row) in natural order (layers_2 before layers_10), a run of numbered modules of
  one size in one row: ('layers_0..15 (16 x)', their sums)."""
  natural = lambda name: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]  # noqa: E731
  runs = []  # [name, prefix, last number, size of one, sums, how many]
  for name in sorted(modules, key=natural):
    row, numbered = modules[name], re.fullmatch(r"(.*_)(\d+)", name)
    prefix, number = (numbered.group(1), int(numbered.group(2))) if numbered else (None, None)
    size = (row["count"], row["trainable"])
    run = runs[-1] if runs else None
    if numbered and run and run[1] == prefix and run[2] + 1 == number and run[3] == size:
      run[2], run[5] = number, run[5] + 1
      run[4] = {k: run[4][k] + row[k] for k in row}
    else:
      runs.append([name, prefix, number, size, dict(row), 1])
  return [(name if n == 1 else f"{name}..{last} ({n} x)", sums) for name, _, last, _, sums, n in runs]


def _table(columns, rows):
  """Plain-text columns: the first left-aligned, the others right-aligned."""
  rows = [columns] + rows if columns else rows
  widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
  fmt = lambda row: "  " + "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                     for i, (c, w) in enumerate(zip(row, widths))).rstrip()
  return [fmt(row) for row in rows]


def _flops(x):
  if not x:
    return "n/a"
  for unit, scale in (("Y", 1e24), ("Z", 1e21), ("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6),
                      ("k", 1e3)):
    if x >= scale:
      return f"{x / scale:.1f} {unit}FLOP"
  return f"{x:.0f} FLOP"


def _bytes(n):
  for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if n >= scale:
      return f"{n / scale:.2f} {unit}" if unit in ("GiB", "TiB") else f"{n / scale:.1f} {unit}"
  return f"{n} B"


def _amount(x):
  return f"{x:,.0f}" if x >= 100 else f"{x:.2f}" if x >= 1 else f"{x:.2g}"


_money = lambda x: "n/a" if x is None else "$" + _amount(x)  # noqa: E731


def _duration(hours):
  """Chip time: seconds or minutes when short, else hours (what clouds bill)."""
  if hours >= 1:
    return f"{_amount(hours)} h"
  return f"{hours * 60:.2g} min" if hours >= 1 / 60 else f"{hours * 3600:.2g} s"
