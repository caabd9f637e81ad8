"""Training and sampling speed of a Llama LM on this machine: jaxtrain against a bare JAX loop and PyTorch.

One run prints, measured interleaved (the contenders take turns, round after round; the
tables give medians, and each ratio is the median of the ratios within a round):
  1. training tokens/s of a Llama-architecture LM (~10M and ~50M parameters): jaxtrain's
     train step (tasks, optim, step.make_train_step, jit with donation), a bare JAX loop on
     the same Flax module (model.apply + optax.adamw + mean cross-entropy), and
     transformers' LlamaForCausalLM of the same shape with torch.optim.AdamW, eager and
     torch.compile'd;
  2. MFU: llama.flops_per_token x tokens/s over this machine's float32 matmul peak (the
     faster of a jitted jnp.dot and torch.mm of 2048 x 2048 matrices, best of 10);
  3. sampling new tokens/s with jaxtrain.lm.sampling.Sampler (KV cache) against a compiled
     greedy loop that recomputes the whole forward at every token, and whether their
     greedy tokens agree.
The digits CNN's benchmark is scripts/bench_digits.py; what the two share (a process per
contender, the rounds, the load monitor, the machine's header) is scripts/bench_contenders.py.

Every training contender runs in a process of its own: XLA flags must be set before JAX
starts, and PyTorch's threads slowed the JAX step that ran after them in the same process
(by 4-20% at 50M). Each round's line says how much CPU other processes took meanwhile.

    python scripts/bench_lm.py                      # all of it
    python scripts/bench_lm.py --quick              # a smoke run of every path, ~20 seconds
    python scripts/bench_lm.py --parts=lm --sizes=10m --rounds=7
    python scripts/bench_lm.py --parts=sample --sample_size=50m

PyTorch and transformers are optional (`pip install torch transformers`): without them
their rows are skipped with a note.

Measured on 2026-11-24
----------------------
`/tmp/hf_venv/bin/python scripts/bench_lm.py` (5m54s, with the digits CNN, then a part of
this script, now scripts/bench_digits.py), 2 cores of an Intel Xeon (AVX-512, AMX), idle
(other processes took 0-2% of the CPUs in every round); jax 0.10.2, torch 2.14.1,
transformers 5.23.0. float32 matmul peak: jnp.dot 362, torch.mm 437 GFLOP/s.

  LM training, batch 8 x 256, float32  tokens/s  s/step    MFU  jaxtrain/this
  10m (9.4M)   jaxtrain                    2269    0.90  30.6%
               bare jax                    2271    0.90  30.7%          0.970
               torch eager                 3839    0.53  51.8%          0.573
               torch.compile               4614    0.44  62.3%          0.482
  50m (49.5M)  jaxtrain                     498    4.11  35.0%
               bare jax                     499    4.10  35.1%          0.999
               torch eager                  924    2.22  64.9%          0.537
               torch.compile                985    2.08  69.2%          0.503

  Sampling, 10m, 4 prompts x 32 tokens + 128 new, greedy: Sampler (KV cache) 1902 new
  tokens/s, the full forward per token 84: 22.6x, and the same 512/512 tokens.

- jaxtrain's step costs 0-3% against the bare loop at 10M-50M parameters, 10-20% at the
  1.4M of --quick (5 rounds of 8 steps; --quick's 2 short rounds scatter from 0.6 to 0.97
  of the bare loop). What it adds to every step (step.py's make_train_step,
  tasks.NextToken.units) is metrics the bare loop skips: the 'correct' unit, an argmax
  over the [batch, tokens, vocab] logits (a variadic reduction, slow on XLA:CPU);
  param_norm (step._norm: a max-abs pass, then a scaled sum-of-squares pass, over every
  parameter); grad_norm; and the division of every gradient by the weight sum. Dropping
  the argmax and both norms (in a scratch copy) took the 1.4M model from 0.82 to 0.99 of
  the bare loop and the 10M one from 0.96 to 1.03.
- PyTorch trains these Llamas 1.7-2.1x faster here, and that is XLA:CPU's, not jaxtrain's
  (the bare loop is as slow): 31-35% of the matmul peak against 52-69%. An example from the
  bare loop's trace: the SiLU gradient is fused with the transposing copy that the
  gate_proj weight-gradient matmul wants ([8, 256, 1024] -> [1024, 2048], strided writes):
  ~33 ms per layer, ~15% of the 10M step, where the same math alone takes 2 ms.
- In one process, PyTorch's threads slowed whichever JAX step ran after them (4% after
  eager, 15-20% after torch.compile, at 50M): hence a process per contender.
"""

import functools
import statistics
import sys
import time

from bench_contenders import (interleave, median_ratio, on_off, others_before_start, parser_for, print_machine,
                              start_workers, timed, torch_or_skip, warm_up, with_defaults)

# Llama shapes (vocabulary 8192, tied embeddings, as experiments/code_lm.py has them); `steps`
# is the default number of timed steps per contender per round (a round of seconds).
SIZES = {
    "tiny": dict(dim=128, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=384, steps=4),    # 1.4M, --quick
    "10m": dict(dim=384, num_layers=4, num_heads=6, num_kv_heads=2, mlp_dim=1024, steps=2),    # 9.4M
    "50m": dict(dim=640, num_layers=10, num_heads=10, num_kv_heads=2, mlp_dim=1792, steps=1),  # 49.5M
}
LM_CONTENDERS = ("jaxtrain", "bare jax", "torch eager", "torch.compile")
PARTS = ("lm", "sample")

# Defaults of a full run, and of --quick (a smoke run of every path).
FULL = dict(sizes="10m,50m", batch_size=8, seq_len=256, rounds=5, torch_compile=True, sample_size="10m",
            sample_batch=4, prompt_len=32, new_tokens=128, sample_rounds=3)
QUICK = dict(sizes="tiny", batch_size=4, seq_len=128, rounds=2, torch_compile=False, sample_size="tiny",
             sample_batch=2, prompt_len=16, new_tokens=32, sample_rounds=2)


def parse_args(argv=None):
  parser = parser_for(__doc__, "a smoke run of every path (tiny model, few steps)")
  parser.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
  parser.add_argument("--sizes", help=f"LM sizes, comma list of {', '.join(SIZES)} (default 10m,50m)")
  parser.add_argument("--batch_size", type=int, help="LM training batch (default 8)")
  parser.add_argument("--seq_len", type=int, help="LM training sequence length (default 256)")
  parser.add_argument("--vocab_size", type=int, default=8192)
  parser.add_argument("--steps", type=int, help="timed LM steps per contender per round (default 2 at 10m, 1 at 50m)")
  parser.add_argument("--rounds", type=int, help="LM rounds (default 5)")
  parser.add_argument("--torch_compile", type=on_off, help="torch.compile rows, on|off (default on; off with --quick)")
  parser.add_argument("--sample_size", help="model size for sampling (default 10m)")
  parser.add_argument("--sample_batch", type=int, help="prompts sampled at once (default 4)")
  parser.add_argument("--prompt_len", type=int, help="tokens per prompt (default 32)")
  parser.add_argument("--new_tokens", type=int, help="new tokens per prompt (default 128)")
  parser.add_argument("--sample_rounds", type=int, help="sampling rounds (default 3)")
  args = with_defaults(parser.parse_args(argv), FULL, QUICK)
  unknown = [s for s in args.sizes.split(",") + [args.sample_size] if s not in SIZES]
  if unknown:
    parser.error(f"unknown size {unknown[0]!r}; known: {', '.join(SIZES)}")
  return args


# ---- Language model: three ways to train it ----------------------------------------------

# The same optimizer for all: AdamW as experiments/code_lm.py has it, at a constant rate and
# without clipping (a bare loop would not clip: what jaxtrain adds is then its step's own).
LR, B1, B2, WEIGHT_DECAY = 3e-4, 0.9, 0.95, 0.1


def llama(size, vocab_size):
  from jaxtrain.models.llama import Llama  # pylint: disable=import-outside-toplevel
  shape = {k: v for k, v in SIZES[size].items() if k != "steps"}
  return Llama(vocab_size=vocab_size, tie_embeddings=True, **shape)


def packed_batch(batch_size, seq_len, vocab_size, seed=0):
  """A batch as jaxtrain.data.packing gives it: documents of 20-200 random tokens packed
  into rows (segment_ids 1, 2, ... per document; positions restarting at 0 in each)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, vocab_size, (batch_size, seq_len + 1)).astype(np.int32)
  segment_ids = np.zeros((batch_size, seq_len), np.int32)
  positions = np.zeros((batch_size, seq_len), np.int32)
  for row in range(batch_size):
    start, document = 0, 1
    while start < seq_len:
      end = min(seq_len, start + int(rng.integers(20, 200)))
      segment_ids[row, start:end] = document
      positions[row, start:end] = np.arange(end - start)
      start, document = end, document + 1
  return dict(inputs=tokens[:, :-1], targets=tokens[:, 1:], segment_ids=segment_ids, positions=positions,
              weights=np.ones((batch_size, seq_len), np.float32))


def jaxtrain_lm(model, batch):
  """jaxtrain's own step, built from its parts as build_lib.build does: () -> one step."""
  import jax  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  from jaxtrain import config as config_lib  # pylint: disable=import-outside-toplevel
  from jaxtrain.training import optim
  from jaxtrain import step as step_lib
  from jaxtrain import tasks
  cfg = config_lib.Reader(ml_collections.ConfigDict(dict(
      task=dict(name="next_token"), loss=dict(name="softmax_xent"),
      optimizer=dict(name="adamw", lr=LR, b1=B1, b2=B2, weight_decay=WEIGHT_DECAY),
      schedule=dict(name="constant"))))
  task = tasks.build(cfg)
  tx, lr_fn = optim.build(cfg.optimizer, cfg.section("schedule"), total_steps=10**6, steps_per_epoch=1000,
                          batch_size=len(batch["inputs"]))
  example = task.model_inputs(jax.tree.map(lambda x: x[:1], batch))
  state = jax.jit(functools.partial(step_lib.create_state, model, tx, example, 0))()
  train_step = jax.jit(step_lib.make_train_step(model, task, tx, lr_fn), donate_argnums=0)
  batch = jax.device_put(batch)

  def one():
    nonlocal state
    state, metrics = train_step(state, batch)
    return metrics

  return one


def bare_jax_lm(model, batch):
  """The least a researcher would write: model.apply, mean cross-entropy, optax.adamw."""
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  tx = optax.adamw(LR, b1=B1, b2=B2, weight_decay=WEIGHT_DECAY)
  batch = jax.device_put(batch)
  params = jax.jit(lambda: model.init(jax.random.PRNGKey(0), batch["inputs"][:1], train=False))()["params"]
  opt_state = jax.jit(tx.init)(params)

  def loss_fn(params, batch):
    # The model reads what it reads under jaxtrain: packed documents mask attention.
    logits, _ = model.apply({"params": params}, batch["inputs"], train=True, segment_ids=batch["segment_ids"],
                            positions=batch["positions"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def one():
    nonlocal params, opt_state
    params, opt_state, loss = train_step(params, opt_state, batch)
    return loss

  return one


def torch_lm(model, batch, compile_):
  """transformers' LlamaForCausalLM of the same shape and torch.optim.AdamW, eager or
  compiled: (() -> one step, its parameter count). It attends causally over whole rows (HF's
  model takes no segment ids): the same FLOPs, a little less masking work."""
  torch = torch_or_skip()
  import transformers  # pylint: disable=import-outside-toplevel
  config = transformers.LlamaConfig(
      vocab_size=model.vocab_size, hidden_size=model.dim, intermediate_size=model.hidden_size,
      num_hidden_layers=model.num_layers, num_attention_heads=model.num_heads, num_key_value_heads=model.kv_heads,
      head_dim=model.head_size, rope_theta=model.rope_theta, rms_norm_eps=model.norm_eps,
      max_position_embeddings=batch["inputs"].shape[1], tie_word_embeddings=True, attention_dropout=0.0)
  torch.manual_seed(0)
  net = transformers.LlamaForCausalLM(config).train()
  opt = torch.optim.AdamW(net.parameters(), lr=LR, betas=(B1, B2), weight_decay=WEIGHT_DECAY)
  inputs = torch.as_tensor(batch["inputs"], dtype=torch.long)
  targets = torch.as_tensor(batch["targets"], dtype=torch.long)

  def train_step(inputs, targets):
    logits = net(input_ids=inputs).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  if compile_:
    train_step = torch.compile(train_step)
  return (lambda: train_step(inputs, targets).item()), sum(p.numel() for p in net.parameters())


def contender(spec):
  """Worker side: one LM contender built and warmed up; (run(steps) -> tokens/s, info, None)."""
  import jax  # pylint: disable=import-outside-toplevel
  model = llama(spec["size"], spec["vocab_size"])
  batch = packed_batch(spec["batch_size"], spec["seq_len"], spec["vocab_size"])
  name = spec["contender"]
  start = time.perf_counter()
  if name.startswith("torch"):
    one, params = torch_lm(model, batch, compile_=name == "torch.compile")
  else:
    one = (jaxtrain_lm if name == "jaxtrain" else bare_jax_lm)(model, batch)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch["inputs"][:1], train=False))
    params = sum(x.size for x in jax.tree.leaves(shapes["params"]))
  warm_up(lambda: timed(one, 2), compiled=name == "torch.compile")  # Compile, warm up.
  tokens = spec["batch_size"] * spec["seq_len"]
  info = {"params": params, "build_s": time.perf_counter() - start}
  return (lambda steps: tokens * steps / timed(one, steps)), info, None


def bench_lm(args, peak):
  """Parts 1 and 2: tokens/s and MFU of each contender at each size."""
  from jaxtrain.models.llama import flops_per_token  # pylint: disable=import-outside-toplevel
  rows = []
  for size in args.sizes.split(","):
    model = llama(size, args.vocab_size)
    print(f"\n{size}: Llama (dim {model.dim}, {model.num_layers} layers, {model.num_heads} heads / "
          f"{model.kv_heads} kv, mlp {model.hidden_size}, vocab {model.vocab_size} tied), batch {args.batch_size} x "
          f"{args.seq_len} tokens; building each contender in its own process (all at once)...", flush=True)
    names = [n for n in LM_CONTENDERS if args.torch_compile or n != "torch.compile"]
    spec = dict(size=size, batch_size=args.batch_size, seq_len=args.seq_len, vocab_size=args.vocab_size)
    workers, infos, notes = start_workers("bench_lm", {name: (dict(spec, contender=name), "") for name in names})
    if not args.torch_compile:
      notes.append("torch.compile: skipped (--torch_compile=off; --quick turns it off: it compiles for ~1 minute)")
    try:
      for name, info in infos.items():
        print(f"  {name}: {info['params'] / 1e6:.2f}M params, built and warmed up in {info['build_s']:.0f}s")
      rates = interleave({name: w.run for name, w in workers.items()}, args.rounds,
                         args.steps or SIZES[size]["steps"], "tokens/s", [w.process.pid for w in workers.values()])
    finally:
      for worker in workers.values():
        worker.close()
    num_params = infos["jaxtrain"]["params"]
    notes += [f"{name} has {info['params'] / 1e6:.2f}M params, jaxtrain {num_params / 1e6:.2f}M: not the same shape"
              for name, info in infos.items() if info["params"] != num_params]
    for note in notes:
      print(f"  note: {note}")
    rows.append((size, num_params, flops_per_token(model, args.seq_len), rates))

  print(f"\nLM training, float32 ({args.rounds} rounds, median; MFU = flops_per_token x tokens/s / "
        f"{peak / 1e9:.0f} GFLOP/s)")
  print(f"{'size':5} {'params':>7} {'contender':14} {'tokens/s':>9} {'s/step':>7} {'MFU':>6} {'jaxtrain/this':>14}")
  for size, num_params, flops, rates in rows:
    for name, values in rates.items():
      tok_s = statistics.median(values)
      ratio = f"{median_ratio(rates, 'jaxtrain', name):14.3f}" if name != "jaxtrain" else f"{'':14}"
      print(f"{size:5} {num_params / 1e6:6.1f}M {name:14} {tok_s:9.0f} {args.batch_size * args.seq_len / tok_s:7.2f} "
            f"{flops * tok_s / peak:6.1%} {ratio}")
  return rows


# ---- Sampling ----------------------------------------------------------------------------


def greedy_without_cache(model, prompt_len, new_tokens, variables, prompts):
  """Greedy decoding that recomputes the whole forward over a fixed [B, prompt + new]
  buffer for every token, compiled once (fori_loop): the fair no-KV-cache baseline. The
  causal mask keeps the unfilled slots to the right out of the position read."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  buffer = jnp.zeros((prompts.shape[0], prompt_len + new_tokens), jnp.int32).at[:, :prompt_len].set(prompts)

  def next_token(i, buffer):
    logits, _ = model.apply(variables, buffer, train=False)
    last = jax.lax.dynamic_index_in_dim(logits, prompt_len + i - 1, axis=1, keepdims=False)
    token = jnp.argmax(last, axis=-1).astype(jnp.int32)
    return jax.lax.dynamic_update_slice(buffer, token[:, None], (0, prompt_len + i))

  return jax.lax.fori_loop(0, new_tokens, next_token, buffer)[:, prompt_len:]


def bench_sampling(args):
  """Part 3: new tokens/s with and without a KV cache, and whether the two agree."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jaxtrain.lm.sampling import Sampler  # pylint: disable=import-outside-toplevel
  model = llama(args.sample_size, args.vocab_size)
  prompts = np.random.default_rng(1).integers(1, args.vocab_size, (args.sample_batch, args.prompt_len)).astype(np.int32)
  variables = jax.jit(lambda: model.init(jax.random.PRNGKey(0), prompts[:1], train=False))()
  print(f"\nsampling: the {args.sample_size} Llama with random weights, greedy, {args.sample_batch} prompts x "
        f"{args.prompt_len} tokens + {args.new_tokens} new; compiling...", flush=True)
  sampler = Sampler(model, variables, eos_ids=(), pad_id=0)
  no_cache = jax.jit(functools.partial(greedy_without_cache, model, args.prompt_len, args.new_tokens))
  prompt_lists = prompts.tolist()
  cached_tokens = np.asarray(sampler.generate(prompt_lists, args.new_tokens))  # Compiles both,
  recomputed_tokens = np.asarray(no_cache(variables, prompts))                # and their tokens.
  new = args.sample_batch * args.new_tokens
  runs = {"KV cache (Sampler)": lambda n: new * n / timed(lambda: sampler.generate(prompt_lists, args.new_tokens), n),
          "no cache (full forward)": lambda n: new * n / timed(lambda: no_cache(variables, prompts), n)}
  rates = interleave(runs, args.sample_rounds, 1, "new tokens/s")
  print(f"\nsampling ({args.sample_rounds} rounds, median)")
  print(f"{'method':26} {'new tokens/s':>13} {'ms per decoding step (a token for each prompt)':>48}")
  for name, values in rates.items():
    rate = statistics.median(values)
    print(f"{name:26} {rate:13.1f} {1000 * args.sample_batch / rate:48.2f}")
  same = cached_tokens == recomputed_tokens
  agree = f"yes, {same.sum()}/{same.size}"
  if not same.all():
    row, col = np.argwhere(~same)[0]
    agree = f"NO, {same.sum()}/{same.size} (first difference: prompt {row}, new token {col})"
  print(f"KV cache speed-up: {median_ratio(rates, 'KV cache (Sampler)', 'no cache (full forward)'):.1f}x; "
        f"the greedy tokens agree: {agree}")
  return rates


# ---- Main --------------------------------------------------------------------------------


def main(argv=None):
  args = parse_args(argv)
  parts = args.parts.split(",")
  unknown = [p for p in parts if p not in PARTS]
  if unknown:
    raise SystemExit(f"unknown part {unknown[0]!r}; known: {', '.join(PARTS)}")
  busy = others_before_start()
  start = time.perf_counter()
  peak = print_machine(busy)
  if "lm" in parts:
    bench_lm(args, peak)
  if "sample" in parts:
    bench_sampling(args)
  print(f"\ntotal {time.perf_counter() - start:.0f}s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
