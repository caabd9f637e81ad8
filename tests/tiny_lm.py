"""A language model small enough for tests: `--config=tests/tiny_lm.py:CORPUS_DIR`, where
CORPUS_DIR holds text files (the tests copy a few standard-library modules there)."""

import ml_collections

from jaxtrain.config import duration

VOCAB_SIZE = 384


def get_config(corpus):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.update(duration("total", steps=60))
  c.update(duration("log_every", steps=10))
  c.input = ml_collections.ConfigDict()
  c.input.data = dict(format="text", files=f"{corpus}/*.py", split="train", validation_fraction=0.2, seq_len=32,
                      tokenizer=dict(kind="bpe", vocab_size=VOCAB_SIZE),
                      data_dir=ml_collections.config_dict.placeholder(str))
  c.input.batch_size = 16
  c.input.pp = ""
  c.task = dict(name="next_token", logits="all")
  c.model = dict(name="llama", vocab_size=VOCAB_SIZE, dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                 mlp_dim=64, dropout=0.0, scan_layers=False)
  c.parallel = dict(strategy="jit", mesh=dict(data=-1, fsdp=1, tensor=1), fsdp_min_size=2**16, rules=())
  c.optimizer = dict(name="adamw", lr=3e-3, weight_decay=0.1, grad_clip_norm=1.0)
  c.schedule = dict(name="cosine", **duration("warmup", steps=5))
  c.evals = ml_collections.ConfigDict()
  c.evals.val = dict(type="lm", data=dict(split="validation"), **duration("every", steps=20))
  c.checkpoint = dict(keep=100, **duration("every", steps=10))
  return c
