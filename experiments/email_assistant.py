"""An email assistant: a pre-trained language model fine-tuned on your own mailbox.

    python -m jaxtrain.launch --config=experiments/email_assistant.py:PATH/TO/mail.mbox \\
        --config.init_from.workdir=runs/code_lm --workdir=runs/email
    python -m jaxtrain.launch --config=experiments/email_assistant.py:PATH/TO/mail.mbox \\
        --config.init_from.hf_dir=PATH/TO/SmolLM-135M --workdir=runs/email

The mailbox is one mbox file (Thunderbird's ImportExportTools, Gmail's Takeout). Where it
holds threads, each reply is a training example: the prompt is the message it answers
followed by the reply's headers, the completion is what was written back (quoted text
removed), and only the completion is scored. Messages that answer nothing in the mailbox
are plain text, learnt whole (format 'mbox_replies', jaxtrain/data/documents.py).

The model, its architecture and its tokenizer are the pre-trained one's (init_from.model):
a jaxtrain run or a Hugging Face Llama directory. The defaults are the textbook's: learning
rate 1e-4, 3 epochs, batch 4, LoRA adapters (rank 8 on every attention and MLP projection;
the base stays frozen), and early stopping on a held-out 10% of the mailbox (by content
hash), evaluated every half epoch; the best checkpoint is kept. `samples` drafts replies to
two held-out emails at each evaluation (samples.jsonl). Then draft your own:

    python -m jaxtrain.generate --model=runs/email --prompt="$(python -c '...reply_prompt...')"
    # or in Python: lm = jaxtrain.lm.load("runs/email")
    #   lm.generate(documents.reply_prompt(message, {"From": me, "To": them, "Subject": "Re: ..."}))

and export it: `python -m jaxtrain.export --workdir=runs/email --format=peft|hf --out=DIR`.
Measured: docs/fine_tuning.md, "The email assistant".
"""

import ml_collections

from jaxtrain.config import duration
from jaxtrain.data import documents
from jaxtrain.errors import UserError

VALIDATION_FRACTION = 0.1
SEQ_LEN = 256  # The code LM's context; a Hugging Face model may take more (--config.input.data.seq_len).
LORA_TARGETS = ("self_attn/(q|k|v|o)_proj", "mlp/(gate|up|down)_proj")


def get_config(arg=None):
  if not arg:
    raise UserError("give your mailbox after the file name: --config=experiments/email_assistant.py:PATH/TO/mail.mbox")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.update(duration("total", epochs=3))
  c.update(duration("log_every", steps=10))

  c.input = ml_collections.ConfigDict()
  c.input.data = dict(format="mbox_replies", files=arg, validation_fraction=VALIDATION_FRACTION, split="train",
                      seq_len=SEQ_LEN, tokenizer=ml_collections.config_dict.placeholder(str),
                      data_dir=ml_collections.config_dict.placeholder(str))
  c.input.batch_size = 4
  c.input.pp = ""

  # The pre-trained model: set one of workdir / hf_dir on the command line. model=True takes
  # its architecture and tokenizer; the keys below change only what they name.
  c.init_from = dict(workdir=ml_collections.config_dict.placeholder(str),
                     hf_dir=ml_collections.config_dict.placeholder(str), model=True)
  c.model = dict(dtype="float32", residual_dropout=0.0)
  c.task = dict(name="next_token")
  c.parallel = dict(strategy="jit", mesh=dict(data=-1, fsdp=1, tensor=1), rules=(), accumulate_steps=1)
  c.loss = dict(name="softmax_xent", label_smoothing=0.0)
  c.lora = dict(rank=8, alpha=16.0, dropout=0.05, targets=LORA_TARGETS)
  c.optimizer = dict(name="adamw", lr=1e-4, weight_decay=0.0, grad_clip_norm=1.0)
  c.schedule = dict(name="cosine", end_factor=0.1, **duration("warmup", epochs=0.1))

  c.evals = ml_collections.ConfigDict()
  c.evals.val = dict(type="lm", data=dict(split="validation"), batch_size=8, **duration("every", epochs=0.5))
  prompts = held_out_prompts(arg)
  if prompts:
    c.evals.samples = dict(type="samples", prompts=prompts, max_new_tokens=64, truncate_prompts=True,
                           **duration("every", epochs=1))
  c.early_stopping = dict(metric="val/loss", mode="min", patience=2, min_delta=0.0)
  c.checkpoint = dict(keep=2, **duration("every", epochs=1))
  # --config.profile.start_step=N: a JAX profiler trace of num_steps steps in WORKDIR/profile.
  c.profile = dict(start_step=ml_collections.config_dict.placeholder(int), num_steps=5)
  c.peak_tflops_per_device = ml_collections.config_dict.placeholder(float)
  return c


def held_out_prompts(path, count=2):
  """The prompts of the `count` shortest held-out replies (cut to their end where they
  outgrow the context: truncate_prompts); none where the mailbox cannot be read (training
  then says why in one line)."""
  try:
    documents.check_mbox(path)
    prompts = [document[0][0] for document in documents.read("mbox_replies", [path])
               if len(document) == 2 and documents.in_split(document, "validation", VALIDATION_FRACTION)]
  except (OSError, UserError):
    return ()
  return tuple(sorted(prompts, key=len)[:count])
