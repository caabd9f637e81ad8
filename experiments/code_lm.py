"""A small Llama-architecture language model pre-trained on the Python standard library's
own source code (it ships with every Python: nothing to download), on the CPU.

    python -m jaxtrain.launch --config=experiments/code_lm.py --workdir=runs/code_lm

The first run builds the corpus (a TFDS dataset split by file into train / validation /
test), trains a 4,096-piece SentencePiece tokenizer on the train split and packs each
split into rows of 256 tokens; later runs reuse all three. The evaluator `val` reports
val/loss, val/perplexity and val/bits_per_byte on the held-out validation files, which
compare with `python scripts/xz_baseline.py` (xz -9e on the same files); `samples` writes
greedy completions of three prompts to samples.jsonl. Then:

    python -m jaxtrain.generate --model=runs/code_lm --prompt='def '

Figures and samples: docs/results.md.
"""

import ml_collections

from jaxtrain.config import duration

VOCAB_SIZE = 4096


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.update(duration("total", steps=400))  # ~19 minutes on 2 CPU cores: see docs/results.md.
  c.update(duration("log_every", steps=25))

  c.input = ml_collections.ConfigDict()
  c.input.data = dict(name="stdlib_code", split="train", seq_len=256,
                      tokenizer=dict(kind="sentencepiece", vocab_size=VOCAB_SIZE),
                      data_dir=ml_collections.config_dict.placeholder(str))
  c.input.batch_size = 32
  c.input.pp = ""

  c.task = dict(name="next_token")
  c.model = dict(name="llama", vocab_size=VOCAB_SIZE, dim=256, num_layers=4, num_heads=8, num_kv_heads=4,
                 mlp_dim=768, tie_embeddings=True, dropout=0.0, dtype="float32", scan_layers=False, remat="none")
  c.parallel = dict(strategy="jit", mesh=dict(data=-1, fsdp=1, tensor=1), rules=(), accumulate_steps=1)
  c.loss = dict(name="softmax_xent", label_smoothing=0.0)
  c.optimizer = dict(name="adamw", lr=3e-3, b2=0.95, weight_decay=0.1, grad_clip_norm=1.0)
  c.schedule = dict(name="cosine", end_factor=0.1, **duration("warmup", steps=50))

  c.evals = ml_collections.ConfigDict()
  # The held-out files, tokenized and packed as the training data is (tokenizer, seq_len and
  # data_dir come from input.data).
  c.evals.val = dict(type="lm", data=dict(split="validation"), batch_size=64, **duration("every", steps=200))
  c.evals.test = dict(type="lm", data=dict(split="test"), batch_size=64)  # Once, at the end.
  # Greedy completions into samples.jsonl and TensorBoard's text tab, at each evaluation.
  c.evals.samples = dict(type="samples", prompts=("def ", "class Stack:\n    def ", "import "), max_new_tokens=64,
                         **duration("every", steps=200))
  c.checkpoint = dict(keep=2, **duration("every", steps=200))
  # --config.profile.start_step=N: a JAX profiler trace of num_steps steps in WORKDIR/profile.
  c.profile = dict(start_step=ml_collections.config_dict.placeholder(int), num_steps=5)
  # The peak of the MFU figure: known for GPUs and TPUs; on CPUs set it to see MFU.
  c.peak_tflops_per_device = ml_collections.config_dict.placeholder(float)
  return c
