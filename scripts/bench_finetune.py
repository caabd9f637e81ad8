"""LoRA fine-tuning of a real model on this machine: jaxtrain against transformers + peft.

    python scripts/fetch_model.py smollm2-135m-instruct        # prints GGUF, the model's path
    python scripts/bench_finetune.py --model=GGUF              # the training step, then start-up and memory
    python scripts/bench_finetune.py --model=GGUF --parts=step --rounds=5 --torch_compile=on
    python scripts/bench_finetune.py --model=GGUF --quick      # a smoke run of every path

1. **step**: training tokens/s of the email assistant's LoRA step (experiments/email_assistant.py:
   rank 8 on the 7 projections, alpha 16, dropout 0.05, AdamW, gradient clipping at 1.0,
   float32) on batches of 4 x 256 tokens of make_mailbox's mail, the loss on the replies
   alone. Contenders, each in a process of its own, taking turns round after round
   (scripts/bench_contenders.py): jaxtrain's compiled train step as `jaxtrain.launch` builds
   it; transformers + peft, eager (what a researcher who fine-tunes with PyTorch runs) and
   torch.compile'd. Every contender trains on the same batches (made once by jaxtrain's
   data pipeline, cycled) from the same GGUF file's weights; the first step's loss of each is
   printed beside jaxtrain's, the proof that they compute the same thing (LoRA's B starts at
   zero: the first loss is the base model's, up to dropout).
2. **launch**: the user's command, `python -m jaxtrain.launch --config=experiments/email_assistant.py:MBOX
   --config.init_from.gguf=GGUF --config.input.data.seq_len=256` for a few steps in a fresh
   work directory, twice with a fresh JAX_COMPILATION_CACHE_DIR (JAX's persistent
   compilation cache: the first run compiles and fills it, the second reads it): seconds
   from the start of the process to the first step's end (its metrics row) and to the end,
   and the process's peak RSS; then the same fine-tune written as a transformers + peft
   script (load the GGUF, wrap, train the same steps). --launch_flags adds flags.

Transformers' Llama takes no segment ids: on packed rows it attends across the documents of a
row, where jaxtrain's mask keeps them apart (the same matmuls; the losses then differ a
little after the first document). PyTorch, transformers and peft are optional
(`pip install -e '.[peft]'`): without them their rows are skipped with a note.

Measured on 2026-12-07 (docs/results.md), 2 cores of an AMD EPYC, idle; jax 0.10.2, torch
2.13.0, transformers 5.25.0, peft 0.21.2. `--rounds=3 --steps=4
--jaxtrain_variants=lora.base_dtype=bfloat16`:

  contender                           tokens/s  s/step  jaxtrain/this
  jaxtrain                                 191    5.35
  peft eager                               169    6.05          1.130
  peft eager, huge pages                   154    6.64          1.247
  jaxtrain lora.base_dtype=bfloat16        172    5.96          1.113

The first loss 2.9910 (2.9919 with the bfloat16 base); jaxtrain ahead in every round
(1.06-1.19), though the rounds spread by up to 20% (an earlier run: 0.959). `--parts=launch`:
first step done after 29.1 s, end 53.6 s, peak RSS 3.96 GiB; again with the compilation
cache warm 27.4 s, 51.5 s, 3.94 GiB; transformers + peft 23.8 s, 37.5 s, 4.84 GiB.
jaxtrain's contenders run with the environment `jaxtrain.launch` gives itself (huge pages,
jaxtrain/training/host_memory.py); peft as a researcher runs it, and again with them.
"""

import importlib.util
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable=wrong-import-position
from bench_contenders import (Skip, interleave, median_ratio, on_off, others_before_start, parser_for,  # noqa: E402
                              print_machine, start_workers, torch_or_skip, warm_up, with_defaults)
# pylint: enable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSISTANT = os.path.join(ROOT, "experiments", "email_assistant.py")
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
THREADS = 60          # make_mailbox's mailbox: the check's (scripts/check_email_assistant.py).
NUM_BATCHES = 8       # Distinct batches the contenders cycle through.
FULL = dict(rounds=3, steps=4, batch_size=4, seq_len=256, launch_steps=3, torch_compile=False)
QUICK = dict(rounds=2, steps=1, batch_size=2, seq_len=256, launch_steps=1, torch_compile=False)


def parse_args(argv=None):
  parser = parser_for(__doc__, quick="batch 2 x 256 tokens, 2 rounds of 1 step, 1-step launches: checks every path")
  parser.add_argument("--model", required=True, help="the GGUF file (scripts/fetch_model.py prints it)")
  parser.add_argument("--parts", default="step,launch", help="comma-separated: step, launch")
  parser.add_argument("--rounds", type=int)
  parser.add_argument("--steps", type=int, help="training steps per contender per round")
  parser.add_argument("--batch_size", type=int)
  parser.add_argument("--seq_len", type=int)
  parser.add_argument("--launch_steps", type=int, help="steps of the launch part's runs")
  parser.add_argument("--jaxtrain_variants", default="",
                      help="more jaxtrain contenders, comma-separated, each KEY=VALUE[+KEY=VALUE], KEY of "
                           "config.model or a dotted path: e.g. scan_layers=false,task.logits=all")
  parser.add_argument("--launch_flags", default="",
                      help="comma-separated flags added to the launch part's command, e.g. "
                           "--config.model.scan_layers=False")
  parser.add_argument("--torch_compile", type=on_off, help="add the torch.compile contender (compiles for minutes)")
  parser.add_argument("--out", help="a directory for the mailbox, the batches and the launch part's runs "
                                    "(default: a temporary one)")
  args = with_defaults(parser.parse_args(argv), FULL, QUICK)
  if not os.path.isfile(args.model) or not args.model.endswith(".gguf"):
    parser.error(f"--model={args.model} is not a .gguf file; `python scripts/fetch_model.py smollm2-135m-instruct` "
                 "prints the path of one")
  return args


# ---- The data: the assistant's batches, made once ---------------------------------------


def assistant_config(model, mbox, batch_size, seq_len):
  """experiments/email_assistant.py on `mbox` from `model`, training only (no evaluators)."""
  spec = importlib.util.spec_from_file_location("email_assistant", ASSISTANT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(mbox)
  config.init_from.gguf = model
  config.input.batch_size, config.input.data.seq_len = batch_size, seq_len
  for key in list(config.evals):
    del config.evals[key]
  del config["early_stopping"]
  return config


def write_batches(args, directory):
  """The mailbox and NUM_BATCHES of the assistant's batches, as numpy arrays in an .npz."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import make_mailbox  # pylint: disable=import-outside-toplevel
  from jaxtrain.training import build as build_lib  # pylint: disable=import-outside-toplevel
  from jaxtrain.training import init_from as init_from_lib  # pylint: disable=import-outside-toplevel
  from jaxtrain import config as config_lib  # pylint: disable=import-outside-toplevel
  mbox = os.path.join(directory, f"mail_{THREADS}.mbox")
  if not os.path.exists(mbox):
    make_mailbox.write(mbox, threads=THREADS)
  config = init_from_lib.resolve_model(assistant_config(args.model, mbox, args.batch_size, args.seq_len))
  cfg = config_lib.Reader(config)
  strategy, _ = build_lib.build_strategy(cfg)
  data_ = build_lib.build_data(cfg, strategy, seed=0)
  # Batches with a reply in them: a batch of prompts alone has no loss (0 / 0).
  batches = list(itertools.islice((b for b in (data_.train_ds[i] for i in range(len(data_.train_ds)))
                                   if b["weights"].any()), NUM_BATCHES))
  path = os.path.join(directory, f"batches_{args.batch_size}x{args.seq_len}.npz")
  np.savez(path, **{f"{i}/{k}": np.asarray(v) for i, b in enumerate(batches) for k, v in b.items()})
  weights = sum(float(b["weights"].sum()) for b in batches) / sum(b["weights"].size for b in batches)
  return mbox, path, len(batches), weights


def read_batches(path):
  import numpy as np  # pylint: disable=import-outside-toplevel
  with np.load(path) as f:
    batches = {}
    for key in f.files:
      index, name = key.split("/")
      batches.setdefault(int(index), {})[name] = f[key]
  return [batches[i] for i in sorted(batches)]


# ---- The contenders (in their worker processes) ------------------------------------------


def jaxtrain_step(spec):
  """jaxtrain's train step as `jaxtrain.launch` builds it, with spec['config_keys'] (dotted
  paths) set in the config: (() -> loss, first loss, params)."""
  import jax  # pylint: disable=import-outside-toplevel
  from jaxtrain.training.build import build  # pylint: disable=import-outside-toplevel
  config = assistant_config(spec["model"], spec["mbox"], spec["batch_size"], spec["seq_len"])
  for key, value in spec.get("config_keys", {}).items():
    *sections, name = key.split(".")
    section = config
    for part in sections:
      section = section[part]
    section[name] = value
  exp = build(config)
  state = exp.fresh_state()
  batches = [exp.strategy.shard(b) for b in read_batches(spec["batches"])]
  count = [0]

  def one():
    nonlocal state
    state, metrics = exp.train_step(state, batches[count[0] % len(batches)])
    count[0] += 1
    return metrics["loss"]

  first = float(jax.device_get(one()))
  return one, first, sum(x.size for x in jax.tree.leaves(state.params))


def peft_step(spec, compile_):
  """transformers' model of the GGUF with peft's LoRA of the same shape, AdamW on the
  adapters, clipping at 1.0, the loss on the replies (labels -100 elsewhere)."""
  torch = torch_or_skip()
  try:
    import peft  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise Skip("peft not installed (pip install peft)") from None
  import transformers  # pylint: disable=import-outside-toplevel
  directory, name = os.path.split(spec["model"])
  model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
  torch.manual_seed(0)
  model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                                     target_modules=list(TARGETS), task_type="CAUSAL_LM"))
  model.train()
  trainable = [p for p in model.parameters() if p.requires_grad]
  opt = torch.optim.AdamW(trainable, lr=1e-3, weight_decay=0.0)
  batches = []
  for b in read_batches(spec["batches"]):
    labels = torch.as_tensor(b["targets"], dtype=torch.long).masked_fill(torch.as_tensor(b["weights"] == 0), -100)
    batches.append((torch.as_tensor(b["inputs"], dtype=torch.long), torch.as_tensor(b["positions"], dtype=torch.long),
                    labels))

  def train_step(inputs, positions, labels):
    # labels are already the next tokens: shift nothing (transformers would shift `labels=`).
    logits = model(input_ids=inputs, position_ids=positions).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                             ignore_index=-100)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()

  if compile_:
    train_step = torch.compile(train_step)
  count = [0]

  def one():
    loss = train_step(*batches[count[0] % len(batches)])
    count[0] += 1
    return loss

  first = []
  warm_up(lambda: first.append(float(one())), compiled=compile_)
  return one, first[0], sum(p.numel() for p in model.parameters())


def contender(spec):
  """Worker side: one contender built and warmed up; (run(steps) -> tokens/s, info, None)."""
  start = time.perf_counter()
  if spec["contender"].startswith("jaxtrain"):
    one, first, params = jaxtrain_step(spec)
    import jax  # pylint: disable=import-outside-toplevel
    sync = jax.block_until_ready
  else:
    one, first, params = peft_step(spec, compile_=spec["contender"] == "peft torch.compile")
    sync = lambda x: x.item()  # noqa: E731
  one()  # The second step: compiled and warm (torch.compile specialises on the second call too).
  tokens = spec["batch_size"] * spec["seq_len"]

  def run(steps):
    begin = time.perf_counter()
    out = None
    for _ in range(steps):
      out = one()
    sync(out)
    return tokens * steps / (time.perf_counter() - begin)

  return run, {"first_loss": first, "params": params, "build_s": time.perf_counter() - start,
               "rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}, None


def _value(text):
  """A variant's value: true/false, a number, or the text."""
  try:
    return json.loads(text.lower() if text.lower() in ("true", "false") else text)
  except ValueError:
    return text


def huge_pages_env():
  """The variable `jaxtrain.launch` starts itself with (jaxtrain/training/host_memory.py), {} where none."""
  from jaxtrain.training import host_memory  # pylint: disable=import-outside-toplevel
  env = host_memory.environment()
  return {} if env is None else {"GLIBC_TUNABLES": env["GLIBC_TUNABLES"]}


def bench_step(args, mbox, batches, weighted):
  # jaxtrain's contenders run as jaxtrain.launch would: with huge pages for XLA's buffers.
  # transformers + peft as a researcher runs them, and, where they apply, with huge pages too.
  pages = huge_pages_env()
  names = ["jaxtrain", "peft eager"] + (["peft eager, huge pages"] if pages else []) + \
      (["peft torch.compile"] if args.torch_compile else [])
  spec = dict(model=os.path.abspath(args.model), mbox=mbox, batches=batches, batch_size=args.batch_size,
              seq_len=args.seq_len)
  specs = {n: (dict(spec, contender=n, env=pages if n == "jaxtrain" or "huge pages" in n else {}), "")
           for n in names}
  for variant in filter(None, args.jaxtrain_variants.split(",")):  # KEY=VALUE+KEY=VALUE, KEY in config.model or dotted.
    keys = dict(kv.split("=", 1) for kv in variant.split("+"))
    specs[f"jaxtrain {variant}"] = (dict(spec, contender=f"jaxtrain {variant}", env=pages,
                                         config_keys={k if "." in k else f"model.{k}": _value(v)
                                                      for k, v in keys.items()}), "")
  print(f"\nLoRA step: batch {args.batch_size} x {args.seq_len} tokens ({weighted:.0%} of them scored: the replies), "
        "float32; building each contender in its own process (all at once)...", flush=True)
  workers, infos, notes = start_workers("bench_finetune", specs)
  if not args.torch_compile:
    notes.append("peft torch.compile: skipped (--torch_compile=off)")
  try:
    for name, info in infos.items():
      print(f"  {name}: {info['params'] / 1e6:.1f}M params, first loss {info['first_loss']:.4f}, built and warmed "
            f"up in {info['build_s']:.0f} s, peak RSS so far {info['rss_gib']:.2f} GiB", flush=True)
    rates = interleave({n: w.run for n, w in workers.items()}, args.rounds, args.steps, "tokens/s",
                       [w.process.pid for w in workers.values()])
  finally:
    for worker in workers.values():
      worker.close()
  for note in notes:
    print(f"  note: {note}")
  print(f"\n{'contender':20} {'tokens/s':>9} {'s/step':>7} {'jaxtrain/this':>14}")
  for name, values in rates.items():
    tok_s = statistics.median(values)
    ratio = f"{median_ratio(rates, 'jaxtrain', name):14.3f}" if name != "jaxtrain" and "jaxtrain" in rates else ""
    print(f"{name:20} {tok_s:9.0f} {args.batch_size * args.seq_len / tok_s:7.2f} {ratio}")
  return rates, infos


# ---- The launch: start-up and peak memory of the user's command --------------------------


PEFT_SCRIPT = """
import resource, sys, time
import numpy as np, torch, transformers, peft
sys.path.insert(0, {scripts!r})
import bench_finetune as b
spec = dict(model={model!r}, batches={batches!r})
one, first, _ = b.peft_step(spec, compile_=False)
print("@@ first", time.time(), flush=True)
for _ in range({steps} - 1):
  one()
print("@@ end", time.time(), flush=True)
"""


def timed_process(command, env=None, first_row=None):
  """Runs `command`; (seconds to its first step, seconds to its end, peak RSS GiB). The first
  step ends when `first_row` (a metrics.jsonl) gets a row, or when the process prints
  '@@ first TIME'."""
  start = time.time()
  process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
  first, tail = None, []
  for line in process.stdout:
    tail = (tail + [line])[-8:]
    if line.startswith("@@ first"):
      first = float(line.split()[2]) - start
    if first is None and first_row and os.path.exists(first_row) and os.path.getsize(first_row):
      first = time.time() - start
  _, status, usage = os.wait4(process.pid, 0)
  end = time.time() - start
  if status:
    raise RuntimeError(f"{' '.join(command[:4])}... exited with status {status}:\n" + "".join(tail))
  return first, end, usage.ru_maxrss / 2**20


def bench_launch(args, mbox, batches):
  """The user's command twice with JAX's persistent compilation cache in a fresh
  JAX_COMPILATION_CACHE_DIR: cold (compiling, filling it), then warm; then the same
  fine-tune as a transformers + peft script."""
  cache = tempfile.mkdtemp(prefix="xla_cache_", dir=args.out)

  def command(workdir):
    return [sys.executable, "-m", "jaxtrain.launch", f"--config={ASSISTANT}:{mbox}", f"--workdir={workdir}",
            f"--config.init_from.gguf={os.path.abspath(args.model)}", f"--config.input.data.seq_len={args.seq_len}",
            f"--config.input.batch_size={args.batch_size}", "--config.total_epochs=0",
            f"--config.total_steps={args.launch_steps}", "--config.log_every_steps=1",
            "--config.schedule.warmup_epochs=0",  # The default warmup is a tenth of 2 epochs: longer than the run.
            *filter(None, args.launch_flags.split(","))]

  print(f"\nThe user's command for {args.launch_steps} steps (the assistant's evaluators included, run at the end):"
        f"\n  $ python {' '.join(command('DIR')[1:])}", flush=True)
  rows, env = {}, dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache)
  for name in ("jaxtrain.launch", "  again, cache warm"):  # The first run compiles and fills the cache.
    workdir = tempfile.mkdtemp(prefix="bench_finetune_run_", dir=args.out)
    rows[name] = timed_process(command(workdir), env=env, first_row=os.path.join(workdir, "metrics.jsonl"))
  try:
    torch_or_skip()
    if importlib.util.find_spec("peft") is None:
      raise Skip("peft not installed (pip install peft)")
    script = PEFT_SCRIPT.format(scripts=os.path.dirname(os.path.abspath(__file__)), model=os.path.abspath(args.model),
                                batches=batches, steps=args.launch_steps)
    rows["transformers + peft"] = timed_process([sys.executable, "-c", script])
  except Skip as e:
    print(f"  note: transformers + peft: skipped ({e})")
  print(f"\n{'command':20} {'first step':>11} {'end':>8} {'peak RSS':>9}")
  for name, (first, end, rss) in rows.items():
    print(f"{name:20} {first or float('nan'):10.1f}s {end:7.1f}s {rss:7.2f} GiB")
  return rows


def main(argv=None):
  args = parse_args(argv)
  busy = others_before_start()
  print_machine(busy)
  directory = args.out or tempfile.mkdtemp(prefix="bench_finetune_")
  os.makedirs(directory, exist_ok=True)
  mbox, batches, count, weighted = write_batches(args, directory)
  print(f"data: {count} batches of {args.batch_size} x {args.seq_len} tokens from make_mailbox's {THREADS} threads "
        f"({mbox}), {weighted:.0%} of the tokens scored", flush=True)
  parts = args.parts.split(",")
  if "step" in parts:
    bench_step(args, mbox, batches, weighted)
  if "launch" in parts:
    bench_launch(args, mbox, batches)
  return 0


if __name__ == "__main__":
  sys.exit(main())
