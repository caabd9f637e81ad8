"""An email assistant: a pre-trained language model fine-tuned on your own mailbox, to
draft replies as you write them.

    python -m jaxtrain.launch --config=experiments/email_assistant.py:PATH/TO/mail.mbox \\
        --config.init_from.gguf="$(python scripts/fetch_model.py smollm2-135m-instruct)" --workdir=runs/email
    python -m jaxtrain.generate --model=runs/email --reply_to=email.eml      # prints the draft
    python -m jaxtrain.export --workdir=runs/email --format=gguf --out=email.gguf   # for llama.cpp / Ollama

The source may also be a Hugging Face directory (init_from.hf_dir) or a jaxtrain run
(init_from.workdir); its architecture, tokenizer and chat template come with it
(init_from.model). The mailbox is one mbox file (Thunderbird's ImportExportTools, Gmail's
Takeout); each reply to a message of the mailbox is a training example (format
'mbox_replies', jaxtrain/data/mail.py, which builds the one prompt training and drafting
share). With a chat template: a system message naming the reply's writer, the email
answered as the user's turn, the reply's own words (quoted text removed) as the
assistant's, the loss on those alone. Without one: the email answered and the reply's
headers, then the reply. Messages that answer nothing (newsletters, each thread's first
message) are left out (replies_only). A .jsonl file instead of a mailbox takes the
textbook's shape, {"input": "Ask Ann to move our Monday meeting", "output": "Subject: ..."}
per line, through the chat template the same way.

The defaults, measured on SmolLM2-135M-Instruct (GGUF) and the demo mailbox of
scripts/make_mailbox.py on 2 CPU cores (docs/email_assistant.md has the tables):
  - LoRA rank 8 on every attention and MLP projection (2.4 M trainable parameters, 1.8%;
    the base frozen), dropout 0.05: the textbook's; lessons 5-7 of scripts/lessons.py
    compare full fine-tuning.
  - Learning rate 1e-3 (cosine to a tenth, 10% warm-up): on 60 threads, after one epoch
    the held-out drafts already open "Hi <first name>," and sign "Best,\\nSam", and the
    held-out loss falls at every evaluation (2.38, 2.04, 1.90, 1.85 every half epoch).
  - 2 epochs: a third took the held-out loss from 1.97 to 1.89 for 50% more time (an
    earlier draft of the mailbox), the style already learnt; 2 epochs of 100 threads (34
    steps) took 14.2 minutes, and the drafts of 8 unseen emails carried the owner's
    greeting and sign-off 8 times of 8 (0 before; scripts/check_email_assistant.py).
  - Rows of 512 tokens (SEQ_LEN), batch 4; 10% held out (by content hash) for the
    held-out loss every half epoch and early stopping (patience 2; the best checkpoint is
    kept), and `samples` drafting replies to the two shortest held-out emails each epoch.
  - Layers scanned (model.scan_layers; the runs above were unrolled): the first step ends
    ~26 s after the command starts instead of 156 s (scripts/bench_finetune.py).
"""

import ml_collections

from jaxtrain.config import duration
from jaxtrain.data import documents
from jaxtrain.data import mail
from jaxtrain.errors import UserError

VALIDATION_FRACTION = 0.1
# A reply with the email it answers is 150-450 tokens in the demo mailbox (SmolLM2's
# tokenizer); rows of 512 keep most of them whole (packing cuts a row's last example).
SEQ_LEN = 512
LORA_TARGETS = ("self_attn/(q|k|v|o)_proj", "mlp/(gate|up|down)_proj")
LR = 1e-3
EPOCHS = 2


def get_config(arg=None):
  if not arg:
    raise UserError("give your mailbox after the file name: --config=experiments/email_assistant.py:PATH/TO/mail.mbox "
                    "(or a .jsonl of {\"input\": request, \"output\": email} lines)")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.update(duration("total", epochs=EPOCHS))
  c.update(duration("log_every", steps=5))

  c.input = ml_collections.ConfigDict()
  common = dict(files=arg, validation_fraction=VALIDATION_FRACTION, split="train", seq_len=SEQ_LEN,
                tokenizer=ml_collections.config_dict.placeholder(str),
                data_dir=ml_collections.config_dict.placeholder(str))
  if arg.endswith(".jsonl"):  # The textbook's shape: a request, and the email written for it.
    c.input.data = dict(format="prompt_completion", prompt_field="input", completion_field="output", **common)
  else:  # Newsletters and each thread's first message answer nothing: the replies are what it learns.
    c.input.data = dict(format="mbox_replies", replies_only=True, **common)
  c.input.batch_size = 4
  c.input.pp = ""

  # The pre-trained model: set one of gguf / hf_dir / workdir on the command line. model=True
  # takes its architecture and tokenizer; the keys below change only what they name.
  c.init_from = dict(gguf=ml_collections.config_dict.placeholder(str),
                     hf_dir=ml_collections.config_dict.placeholder(str),
                     workdir=ml_collections.config_dict.placeholder(str), model=True)
  # scan_layers: one compiled layer looped 30 times. SmolLM2 LoRA, 4 x 256, 2-core CPU
  # (scripts/bench_finetune.py, 2026-12-07): the step compiles in 6 s instead of 43 s and runs
  # at 136 tokens/s instead of 121. Families whose layers differ (gemma3) run unrolled.
  # remat='dots': 2.84 GiB of RSS instead of 3.98, at 0.72 of the speed.
  c.model = dict(dtype="float32", residual_dropout=0.0, scan_layers=True, remat="none")
  # logits='scored': the head only where a reply's token is scored (a fifth of the tokens):
  # 156 tokens/s instead of 141 on the same bench.
  c.task = dict(name="next_token", logits="scored")
  c.parallel = dict(strategy="jit", mesh=dict(data=-1, fsdp=1, tensor=1), rules=(), accumulate_steps=1)
  c.loss = dict(name="softmax_xent", label_smoothing=0.0)
  c.lora = dict(rank=8, alpha=16.0, dropout=0.05, targets=LORA_TARGETS)
  c.optimizer = dict(name="adamw", lr=LR, weight_decay=0.0, grad_clip_norm=1.0)
  c.schedule = dict(name="cosine", end_factor=0.1, **duration("warmup", epochs=0.1))

  c.evals = ml_collections.ConfigDict()
  c.evals.val = dict(type="lm", data=dict(split="validation"), batch_size=8, **duration("every", epochs=0.5))
  prompts, conversations = held_out_prompts(arg)
  if prompts:
    c.evals.samples = dict(type="samples", prompts=prompts, conversations=conversations, max_new_tokens=80,
                           truncate_prompts=True, **duration("every", epochs=1))
  c.early_stopping = dict(metric="val/loss", mode="min", patience=2, min_delta=0.0)
  c.checkpoint = dict(keep=2, **duration("every", epochs=1))
  # --config.profile.start_step=N: a JAX profiler trace of num_steps steps in WORKDIR/profile.
  c.profile = dict(start_step=ml_collections.config_dict.placeholder(int), num_steps=5)
  c.peak_tflops_per_device = ml_collections.config_dict.placeholder(float)
  return c


def held_out_prompts(path, count=2):
  """(prompts, conversations) of the `count` shortest held-out examples, plain and for a
  chat template (the samples evaluator takes the one the training data use); none where the
  data cannot be read (training then says why in one line)."""
  held_out = []
  try:
    if path.endswith(".jsonl"):
      for document in documents.read("prompt_completion", [path], prompt_field="input", completion_field="output"):
        if documents.in_split(document, "validation", VALIDATION_FRACTION):
          held_out.append((document[0][0], (("user", document[0][0]),)))
    else:
      mail.check_mbox(path)
      for parent, message in mail.threads(list(mail.mbox_messages(path))):
        document = [(mail.reply_prompt(parent, message), False), (mail.reply_text(message), True)] if parent else None
        if document and documents.in_split(document, "validation", VALIDATION_FRACTION):
          conversation = tuple((m["role"], m["content"]) for m in mail.reply_messages(parent, message))
          held_out.append((document[0][0], conversation))
  except (OSError, UserError):
    return (), ()
  held_out = sorted(held_out, key=lambda pair: len(pair[0]))[:count]
  return tuple(p for p, _ in held_out), tuple(c for _, c in held_out)
