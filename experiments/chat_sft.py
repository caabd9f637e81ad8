"""Supervised fine-tuning of a chat model on conversations: the loss on the assistant's
replies alone, rendered with the model's own chat template.

    python scripts/make_chat_data.py --out=data/stdlib_chat.jsonl
    python -m jaxtrain.launch --config=experiments/chat_sft.py:data/stdlib_chat.jsonl \\
        --config.init_from.gguf="$(python scripts/fetch_model.py smollm2-135m-instruct)" --workdir=runs/chat
    python -m jaxtrain.generate --model=runs/chat --chat --prompt="What does textwrap.dedent do in Python?"
    python -m jaxtrain.export --workdir=runs/chat --format=gguf --out=chat.gguf   # for llama.cpp / Ollama

The data: JSONL lines {"messages": [{"role": ..., "content": ...}, ...]} (format 'chat',
jaxtrain/data/chat.py). The model, its architecture, tokenizer and chat template are the
pre-trained one's (init_from.model): a GGUF file (init_from.gguf), a Hugging Face directory
(init_from.hf_dir) or a jaxtrain run (init_from.workdir). The defaults are the textbook's
for a small instruct model: LoRA (rank 8 on every attention and MLP projection, the base
frozen), learning rate 2e-4, 3 epochs, batch 4 rows of 256 tokens, early stopping on a held-out
10% of the conversations (by content hash) evaluated every epoch; the best checkpoint is kept.
"""

import ml_collections

from jaxtrain.config import duration
from jaxtrain.errors import UserError

LORA_TARGETS = ("self_attn/(q|k|v|o)_proj", "mlp/(gate|up|down)_proj")


def get_config(arg=None):
  if not arg:
    raise UserError("give the conversations after the file name: --config=experiments/chat_sft.py:PATH/TO/chats.jsonl")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.update(duration("total", epochs=3))
  c.update(duration("log_every", steps=5))
  c.input = ml_collections.ConfigDict()
  c.input.data = dict(format="chat", files=arg, validation_fraction=0.1, split="train", seq_len=256,
                      tokenizer=ml_collections.config_dict.placeholder(str),
                      data_dir=ml_collections.config_dict.placeholder(str))
  c.input.batch_size = 4
  c.input.pp = ""
  # The pre-trained model: set one of gguf / hf_dir / workdir on the command line.
  c.init_from = dict(gguf=ml_collections.config_dict.placeholder(str),
                     hf_dir=ml_collections.config_dict.placeholder(str),
                     workdir=ml_collections.config_dict.placeholder(str), model=True)
  c.model = dict(dtype="float32", residual_dropout=0.0)
  c.task = dict(name="next_token", logits="scored")  # The head only at the replies' tokens (docs/experiments.md).
  c.parallel = dict(strategy="jit", mesh=dict(data=-1, fsdp=1, tensor=1), rules=(), accumulate_steps=1)
  c.loss = dict(name="softmax_xent", label_smoothing=0.0)
  c.lora = dict(rank=8, alpha=16.0, dropout=0.05, targets=LORA_TARGETS)
  c.optimizer = dict(name="adamw", lr=2e-4, weight_decay=0.0, grad_clip_norm=1.0)
  c.schedule = dict(name="cosine", end_factor=0.1, **duration("warmup", epochs=0.1))
  c.evals = ml_collections.ConfigDict()
  c.evals.val = dict(type="lm", data=dict(split="validation"), batch_size=8, **duration("every", epochs=1))
  c.early_stopping = dict(metric="val/loss", mode="min", patience=2, min_delta=0.0)
  c.checkpoint = dict(keep=2, **duration("every", epochs=1))
  return c
