"""Greedy generation speed of SmolLM2-135M-Instruct: jaxtrain against transformers and llama.cpp.

It measures new tokens/s of greedy generation (prompt processing included: each timed call
is a whole `generate`, prefill and decode) at each batch size, for
  - jaxtrain: `jaxtrain.lm.load(GGUF)` (the weights dequantized to float32) and its
    `lm.sampling.Sampler` on the prompts' token ids, EOS not stopping it;
  - transformers: `AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)` (the same
    dequantized weights, float32, torch eager) and `generate` (greedy, left-padded rows,
    eos_token_id=None so that no row stops);
  - llama.cpp: llama-cpp-python on the same GGUF file, quantized as it is (the anchor:
    what a user of the file would run). It decodes one sequence at a time: at batch 8 the 8
    prompts run one after another.
Every contender gets the same token ids (the prompts rendered through the model's chat
template and encoded once, by jaxtrain's tokenizer) and must return exactly
--max_new_tokens new tokens per row. Each runs in a process of its own
(scripts/bench_contenders.py), round after round in turn; the table gives medians and, per
round, the ratios jaxtrain/transformers and jaxtrain/llama.cpp. At batch 1 the k-th run of
every contender takes the k-th prompt (cycling), so each round's pair saw the same prompt.
The first-token time is a generate of one new token (the prefill and one choice) on the
first group of prompts, best of 3. Greedy agreement: how many rows of jaxtrain's tokens
equal transformers' (the same float32 weights: they should, but for near-ties) and
llama.cpp's (which multiplies in its quantized formats: expect fewer).

    export JAXTRAIN_CACHE=/tmp/work/jcache          # where the GGUF's tokenizer is converted
    python scripts/bench_generate.py --model=SmolLM2-135M-Instruct.Q4_1.gguf
    python scripts/bench_generate.py --model=... --quick    # a smoke run: batch 1 and 2, 8 tokens
    python scripts/bench_generate.py --model=... --batch_sizes=1 --max_new_tokens=128 --rounds=7

torch, transformers (and gguf) or llama-cpp-python missing: that contender is skipped with a note.

Measured on 2026-12-07
----------------------
`--model=SmolLM2-135M-Instruct.Q4_1.gguf` (5 rounds, 378 s), 2 cores of an AMD EPYC, idle
(other processes 0-1% of the CPUs in every round); jax 0.10.2, torch 2.13.0, transformers
5.25.0, llama-cpp-python 0.3.36; threads 2. Prompts of 44-170 tokens, 64 new tokens each.

  batch  contender     new tokens/s  first token ms  jaxtrain/this
      1  jaxtrain              31.4             121
      1  transformers          15.9             132           2.04
      1  llama.cpp             80.1             163           0.41
      8  jaxtrain              72.6            3108
      8  transformers          62.2            2324           1.10
      8  llama.cpp             82.2            2016           0.93   (8 prompts one after another)

Greedy tokens: jaxtrain = transformers on 8/8 rows at both batch sizes; = llama.cpp on 4/8
(it multiplies in Q4_1 x Q8: near-ties go either way; the first difference at new token
10). At batch 1 jaxtrain's decode is memory-bound: 36 ms a step, the 538 MB of float32
weights read per token (~15 GB/s), where llama.cpp reads the 4.5-bit file. jaxtrain's
batch-8 first token is a prefill of 8 x 256 slots (the 170-token prompt sets the bucket);
at batch 8 about a tenth of a step is XLA copying each layer's whole KV cache into the
layout `jax.nn.dot_product_attention` wants (docs/results.md says what would remove it).
"""

import importlib.util
import os
import statistics
import sys
import time

from bench_contenders import (Skip, interleave, median_ratio, others_before_start, parser_for, print_machine,
                              start_workers, torch_or_skip, with_defaults)

CONTENDERS = ("jaxtrain", "transformers", "llama.cpp")

# Chat prompts of different lengths: questions and emails to answer.
CONVERSATIONS = [
    "What is the capital of Australia, and why is it not Sydney?",
    "Hi,\n\nCould you send me the slides from Tuesday's meeting? I'd like to go through the Q3 numbers again "
    "before Friday.\n\nThanks,\nMaria",
    "Explain what this Python function does and whether it has a bug:\n\ndef mean(xs):\n    total = 0\n    "
    "for x in xs:\n        total += x\n    return total / len(xs)",
    "Write a short reply to this email.\n\nDear team,\n\nThe office will be closed next Monday for maintenance "
    "of the heating system. Please work from home that day and make sure your laptops are charged. If you "
    "need anything from the office, pick it up before Friday evening.\n\nBest regards,\nFacilities",
    "Give me three ideas for a healthy breakfast that takes less than ten minutes.",
    "Hello,\n\nI ordered a blue jacket (order 48213) two weeks ago and received a green one. I would like to "
    "exchange it for the blue one in size M. The green one still has its tags. What should I do? Do I need "
    "to print a return label, and who pays for the shipping?\n\nKind regards,\nTom Becker",
    "How do I undo the last git commit but keep the changes in my working tree?",
    "Summarise this message in one sentence and suggest a reply.\n\nHi Sam,\n\nFollowing our call, I checked "
    "the budget for the conference trip. Flights are about 420 euros, the hotel 3 nights at 130 euros, and "
    "the registration 250 euros, so roughly 1,060 euros in total, which is above the 900 euros we planned. "
    "We could save by sharing a room or taking the train, which is slower but about 150 euros cheaper. "
    "Could you tell me by Thursday which option you prefer, so I can book before prices go up?\n\nCheers,\nLena",
]

FULL = dict(batch_sizes="1,8", max_new_tokens=64, rounds=5, prompts=len(CONVERSATIONS))
QUICK = dict(batch_sizes="1,2", max_new_tokens=8, rounds=2, prompts=2)


def parse_args(argv=None):
  parser = parser_for(__doc__, "a smoke run: batch 1 and 2, 8 new tokens, 2 prompts, 2 rounds")
  parser.add_argument("--model", required=True, help="the .gguf file (SmolLM2-135M-Instruct.Q4_1.gguf)")
  parser.add_argument("--batch_sizes", help="comma list (default 1,8)")
  parser.add_argument("--max_new_tokens", type=int, help="new tokens per row, exactly (default 64)")
  parser.add_argument("--rounds", type=int, help="rounds (default 5)")
  parser.add_argument("--prompts", type=int, help=f"how many of the {len(CONVERSATIONS)} chat prompts (default all)")
  parser.add_argument("--threads", type=int, default=os.cpu_count(),
                      help="torch's and llama.cpp's threads (default: every core; XLA takes every core)")
  args = with_defaults(parser.parse_args(argv), FULL, QUICK)
  args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
  if not os.path.isfile(args.model):
    parser.error(f"--model={args.model}: no such file")
  return args


def prompt_ids(path, count):
  """The token ids of the first `count` conversations rendered through the GGUF's chat
  template (with the generation prompt), as jaxtrain's LM.chat encodes them."""
  from jaxtrain.data import chat  # pylint: disable=import-outside-toplevel
  from jaxtrain.lm import gguf, gguf_tokenizer  # pylint: disable=import-outside-toplevel
  tokenizer = gguf_tokenizer.load(gguf.read_config(path)[3])
  texts = [chat.render_for(tokenizer, [{"role": "user", "content": c}], add_generation_prompt=True)
           for c in CONVERSATIONS[:count]]
  return [list(tokenizer.encode(t, special_tokens=True)) for t in texts], tokenizer.pad_id or 0


# ---- The contenders: (rows of prompt ids, new tokens) -> rows of new ids -----------------


def jaxtrain_generate(spec):
  import jaxtrain.lm  # pylint: disable=import-outside-toplevel
  from jaxtrain.lm import sampling  # pylint: disable=import-outside-toplevel
  lm = jaxtrain.lm.load(spec["model"])
  sampler = sampling.Sampler(lm.module, lm.variables, eos_ids=(), pad_id=spec["pad_id"])  # No EOS: every token.
  return lambda rows, new: sampler.generate(rows, new)


def transformers_generate(spec):
  torch = torch_or_skip()
  if not importlib.util.find_spec("gguf"):
    raise Skip("gguf not installed (transformers reads GGUF files through it: pip install gguf)")
  torch.set_num_threads(spec["threads"])
  import transformers  # pylint: disable=import-outside-toplevel
  transformers.logging.set_verbosity_error()
  directory, name = os.path.split(spec["model"])
  model = transformers.AutoModelForCausalLM.from_pretrained(
      directory, gguf_file=name, dtype=torch.float32,
      quantization_config=transformers.GgufConfig(gguf_file=name, dequantize=True)).eval()
  # No EOS anywhere: generate fills the None of the config it is given from the model's.
  model.generation_config.eos_token_id = None
  config = transformers.GenerationConfig(do_sample=False, eos_token_id=None, pad_token_id=spec["pad_id"])

  def generate(rows, new):
    width = max(map(len, rows))
    ids = torch.tensor([[spec["pad_id"]] * (width - len(r)) + r for r in rows])  # Left-padded, masked.
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    with torch.no_grad():
      out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config, max_new_tokens=new)
    return out[:, width:].tolist()

  return generate


def llama_cpp_generate(spec):
  if not importlib.util.find_spec("llama_cpp"):
    raise Skip("llama-cpp-python not installed (pip install llama-cpp-python)")
  import llama_cpp  # pylint: disable=import-outside-toplevel
  # use_extra_bufts=False: with the repacked (extra) buffers this build failed to load the file.
  llm = llama_cpp.Llama(spec["model"], n_ctx=1024, n_threads=spec["threads"], n_threads_batch=spec["threads"],
                        use_extra_bufts=False, verbose=False, seed=0)

  def one(row, new):
    llm.reset()  # Else generate reuses the cached prefix of the same prompt: no prefill.
    out = []
    for token in llm.generate(row, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
      out.append(int(token))  # llama-cpp-python's generate does not stop at EOS: we do, at `new`.
      if len(out) == new:
        return out
    return out

  return lambda rows, new: [one(row, new) for row in rows]


def contender(spec):
  """Worker side: (run(calls) -> new tokens/s, info, profile() -> first-token ms), warmed up
  on every group of prompts (every shape compiled), whose tokens `info['ids']` gives."""
  start = time.perf_counter()
  build = {"jaxtrain": jaxtrain_generate, "transformers": transformers_generate, "llama.cpp": llama_cpp_generate}
  generate = build[spec["contender"]](spec)
  prompts, batch, new = spec["prompts"], spec["batch"], spec["max_new_tokens"]
  groups = [prompts[i:i + batch] for i in range(0, len(prompts) - batch + 1, batch)]
  ids = []
  for group in groups:
    rows = generate(group, new)
    if any(len(row) != new for row in rows):
      raise RuntimeError(f"{spec['contender']} gave {[len(r) for r in rows]} new tokens, not {new} per row")
    ids += rows
  calls = 0

  def run(count):
    nonlocal calls
    seconds, tokens = 0.0, 0
    for _ in range(count):
      group = groups[calls % len(groups)]
      calls += 1
      begin = time.perf_counter()
      generate(group, new)
      seconds += time.perf_counter() - begin
      tokens += len(group) * new
    return tokens / seconds

  def profile():
    generate(groups[0], 1)  # Compiles jaxtrain's shapes for one new token.
    times = []
    for _ in range(3):
      begin = time.perf_counter()
      generate(groups[0], 1)
      times.append(time.perf_counter() - begin)
    return {"first_token_ms": min(times) * 1e3}

  return run, {"build_s": time.perf_counter() - start, "ids": ids}, profile


# ---- The driver --------------------------------------------------------------------------


def agreement(ours, theirs):
  """'k/n rows' of identical new tokens, with the first row that differs and where."""
  same = [a == b for a, b in zip(ours, theirs)]
  text = f"{sum(same)}/{len(same)} rows"
  if not all(same):
    row = same.index(False)
    at = next(i for i, (a, b) in enumerate(zip(ours[row], theirs[row])) if a != b)
    text += f" (first difference: prompt {row}, new token {at})"
  return text


def bench(args, prompts, pad_id, batch):
  print(f"\nbatch {batch}: building each contender in its own process (all at once; each warms up on every "
        f"group of prompts)...", flush=True)
  spec = dict(model=args.model, prompts=prompts, pad_id=pad_id, batch=batch, max_new_tokens=args.max_new_tokens,
              threads=args.threads)
  workers, infos, notes = start_workers("bench_generate", {n: (dict(spec, contender=n), "") for n in CONTENDERS})
  try:
    for name, info in infos.items():
      print(f"  {name}: built and warmed up in {info['build_s']:.0f}s")
    rates = interleave({name: w.run for name, w in workers.items()}, args.rounds, 1, "new tokens/s",
                       [w.process.pid for w in workers.values()])
    profiles = {name: w.ask("profile") for name, w in workers.items()}
  finally:
    for worker in workers.values():
      worker.close()
  if "llama.cpp" in workers and batch > 1:
    notes.append(f"llama.cpp: batch {batch} is its {batch} prompts one after another (one sequence at a time)")
  return rates, profiles, infos, notes


def main(argv=None):
  args = parse_args(argv)
  busy = others_before_start()
  start = time.perf_counter()
  print_machine(busy)
  prompts, pad_id = prompt_ids(args.model, args.prompts)
  print(f"{args.model}: {len(prompts)} chat prompts of {', '.join(str(len(p)) for p in prompts)} tokens, "
        f"{args.max_new_tokens} new tokens each, greedy, threads {args.threads}")
  results = {batch: bench(args, prompts, pad_id, batch) for batch in args.batch_sizes}

  print(f"\ngreedy generation, new tokens/s including the prefill ({args.rounds} rounds, median; ratios: median of "
        f"the rounds' ratios; first token: prefill + one choice for prompts {{0..batch-1}}, best of 3)")
  print(f"{'batch':>5} {'contender':13} {'new tokens/s':>12} {'first token ms':>15} {'jaxtrain/this':>14}")
  for batch, (rates, profiles, infos, notes) in results.items():
    for name, values in rates.items():
      ratio = f"{median_ratio(rates, 'jaxtrain', name):14.2f}" if name != "jaxtrain" and "jaxtrain" in rates else ""
      print(f"{batch:5} {name:13} {statistics.median(values):12.1f} {profiles[name]['first_token_ms']:15.0f} {ratio}")
    if "jaxtrain" in infos:
      for name in (n for n in infos if n != "jaxtrain"):
        print(f"      greedy tokens, jaxtrain = {name}: {agreement(infos['jaxtrain']['ids'], infos[name]['ids'])}")
    for note in notes:
      print(f"      note: {note}")
  print(f"\ntotal {time.perf_counter() - start:.0f}s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
