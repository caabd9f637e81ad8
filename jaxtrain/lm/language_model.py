"""Language models for notebooks and scripts: load a jaxtrain run, a Hugging Face
directory or a GGUF file (of a family `lm.families` knows), score tokens, sample text, chat,
export to Hugging Face or GGUF.

    import jaxtrain.lm
    lm = jaxtrain.lm.load("runs/code_lm")            # newest checkpoint; or step=N
    lm = jaxtrain.lm.load("path/to/SmolLM-135M")     # config.json + *.safetensors + tokenizer
    lm = jaxtrain.lm.load("SmolLM2-135M-Instruct.Q4_1.gguf")  # dequantized; param_dtype="bfloat16"
    lm.tokenizer.encode("def f(x):")                 # ids; lm.tokenizer.decode(ids)
    lm.logits([[1, 7, 42]])                          # float32 numpy [batch, length, vocab]
    lm.generate(["def fib(n):"], max_new_tokens=64)  # greedy; temperature=, top_k=, top_p=, seed=, stop=
    lm.chat([{"role": "user", "content": "Hi!"}])    # the reply, through the model's chat template
    lm.export_hf("out/code_lm_hf")                   # transformers loads it (LlamaForCausalLM, ...)
    lm.export_gguf("out/code_lm.gguf", outtype="q8_0")  # llama.cpp runs it

The variables are placed by `parallel_config` (a `config.parallel` section as a dict;
default: FSDP over every device, so a model larger than one device's memory loads): a run's checkpoint is
restored by Orbax, an HF directory read by safetensors and a GGUF file dequantized row by row
straight into those shardings.
Every mistake (a bad path, an architecture no family reads, a tokenizer that does not fit the
model, a prompt longer than the context) raises a UserError with one line.
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jaxtrain.checkpoints import checkpointer as checkpoint
from jaxtrain import config as config_lib
from jaxtrain.data import chat as chat_lib
from jaxtrain.data import mail
from jaxtrain.data import text as text_lib
from jaxtrain.data import tokenizers
from jaxtrain.errors import UserError
from jaxtrain.lm import families
from jaxtrain.lm import gguf
from jaxtrain.lm import gguf_tokenizer
from jaxtrain.lm import hf
from jaxtrain.lm import sampling
from jaxtrain import models
from jaxtrain.models import lora as lora_lib
from jaxtrain import parallel
from jaxtrain.rundir import layout
from jaxtrain.rundir import storage
from jaxtrain import step as step_lib

DEFAULT_PARALLEL = dict(strategy="jit", mesh=dict(data=1, fsdp=-1, tensor=1))


def load(path, step=None, *, parallel_config=None, dtype=None, param_dtype=None):
  """An `LM` from a jaxtrain work directory (its newest checkpoint, or `step`), a Hugging
  Face directory or a GGUF file. `dtype`: the computation dtype ('bfloat16');
  `param_dtype`: the parameters' (default float32; 'bfloat16' halves the memory of a
  Hugging Face or GGUF model, which is read straight into it)."""
  path = storage.absolute(path) if storage.is_gcs(path) else os.path.expanduser(str(path))
  strategy = strategy_for(parallel_config)
  if gguf.is_gguf(path) and not storage.is_gcs(path):
    if step is not None:
      raise UserError(f"step={step} is for jaxtrain work directories; {path} is a GGUF file")
    return _load_gguf(path, strategy, dtype, param_dtype)
  if not storage.isdir(path):
    raise UserError(f"model path {path} does not exist or is not a directory; give a jaxtrain work directory, "
                    f"a Hugging Face model directory or a .gguf file")
  if layout.has_checkpoints(path):
    if param_dtype is not None:
      raise UserError("param_dtype is for Hugging Face and GGUF models; a run's checkpoint keeps its own")
    return _load_run(path, step, strategy, dtype)
  if step is not None:
    raise UserError(f"step={step} is for jaxtrain work directories; {path} has no checkpoints/")
  return _load_hf(path, strategy, dtype, param_dtype)


class LM:
  """A decoder language model with its tokenizer: `logits`, `generate`, `export_hf`."""

  def __init__(self, module, variables, tokenizer, context_length, source, eos_ids=(), strategy=None):
    _check_tokenizer(tokenizer, module, source)
    self.module, self.variables, self.tokenizer = module, variables, tokenizer
    self.context_length, self.source = context_length, source
    self.strategy = strategy or strategy_for()  # Where the variables are (and batches go).
    self.eos_ids = tuple(eos_ids)
    self.family = None  # The model family (lm.families): how it maps to Hugging Face's names.
    self.lora = None  # A LoRA run's (lora.Spec, its adapters' params): what `export --format=peft` writes.
    self.chat_replies = True  # `reply` prompts through the chat template (a run may have trained without).
    self._logits = jax.jit(lambda variables, tokens: module.apply(variables, tokens, train=False)[0])
    eos_ids = sorted(set(eos_ids) | ({tokenizer.eos_id} - {None}))
    self.sampler = sampling.Sampler(module, variables, eos_ids=eos_ids, pad_id=tokenizer.pad_id)

  def __repr__(self):
    params = sum(x.size for x in jax.tree.leaves(self.variables["params"]))
    return f"LM({self.source!r}, {params:,} parameters, context {self.context_length})"

  def logits(self, tokens):
    """Next-token logits, float32 numpy [batch, length, vocab], for int ids [batch, length]."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
      raise UserError(f"logits() takes int token ids of shape [batch, length], got {tokens.dtype} {list(tokens.shape)}")
    if tokens.size and not 0 <= tokens.min() <= tokens.max() < self.module.vocab_size:
      raise UserError(f"token ids must be in [0, {self.module.vocab_size}), got {tokens.min()}..{tokens.max()}")
    if tokens.shape[1] > self.context_length:
      raise UserError(f"{tokens.shape[1]} tokens are more than the model's context of {self.context_length}")
    return np.asarray(self._logits(self.variables, jnp.asarray(tokens, jnp.int32)))

  def generate(self, prompts, max_new_tokens=64, temperature=0.0, top_k=None, top_p=None, seed=0, stop=None,
               add_bos=None, special_tokens=True):
    """Completions of `prompts` (a str or a list of str), without the prompt: greedy at
    temperature 0, else sampled (top_k, top_p) with `seed`; see `sampling.complete`. The
    prompts are encoded as transformers' tokenizer does: BOS first where the tokenizer puts
    it (add_bos=True/False overrides), special tokens in the text ('<|im_start|>') as their
    ids (special_tokens=False: as text, for text you do not trust)."""
    single = isinstance(prompts, str)
    texts = sampling.complete(self.sampler, self.tokenizer, [prompts] if single else list(prompts),
                              context_length=self.context_length, max_new_tokens=max_new_tokens,
                              temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop=stop, add_bos=add_bos,
                              special_tokens=special_tokens)
    return texts[0] if single else texts

  def chat(self, messages, **sampling):
    """The assistant's reply to a conversation (a list of {'role', 'content'} dicts), or
    the replies to a list of conversations: rendered with the model's chat template and
    its generation prompt (data/chat.py), continued by `generate` (its keyword arguments),
    with no BOS of the tokenizer's own: a template that wants one writes it, as
    transformers' apply_chat_template(tokenize=True) does."""
    if self.tokenizer.chat_template is None:
      raise UserError(f"{self.source} has no chat template (its tokenizer has none); give plain text to generate(), "
                      f"or a model tuned for chat")
    several = isinstance(messages, (list, tuple)) and bool(messages) and all(
        isinstance(m, (list, tuple)) for m in messages)
    conversations = list(messages) if several else [messages]
    texts = [chat_lib.render_for(self.tokenizer, c, add_generation_prompt=True) for c in conversations]
    replies = self.generate(texts, add_bos=False, special_tokens=True, **sampling)
    return replies if several else replies[0]

  def reply(self, emails, **options):
    """Drafts of replies to `emails` (an EmailMessage, e.g. from data.mail.read_email, or a
    list of them), prompted as the email assistant trains (data/mail.py): through the chat
    template where the model has one (unless its run trained with chat_template='none'),
    else as plain text; continued by `generate` (its keyword arguments, `options`). An email
    too long for the context with room for the draft is cut at its end (its quoted tail)."""
    single = not isinstance(emails, (list, tuple))
    emails = [emails] if single else list(emails)
    chat = self.tokenizer.chat_template is not None and self.chat_replies
    encoding = dict(add_bos=False, special_tokens=True) if chat else {}
    room = self.context_length - options.get("max_new_tokens", 64)
    prompts = []
    for e in emails:
      if chat:
        prompt_of = lambda text, e=e: chat_lib.render_for(  # noqa: E731
            self.tokenizer, mail.reply_messages(e, mail.reply_headers(e), text), add_generation_prompt=True)
      else:
        prompt_of = lambda text, e=e: mail.reply_prompt(e, mail.reply_headers(e), text)  # noqa: E731
      whole = mail.message_text(e)
      text = sampling.fit_text(self.tokenizer, prompt_of, whole, room, **encoding)
      if text != whole:
        logging.warning("The email '%s' is cut to fit the context of %d tokens with room for the draft.",
                        e.get("Subject", ""), self.context_length)
      prompts.append(prompt_of(text))
    drafts = self.generate(prompts, **encoding, **options)
    return drafts[0] if single else drafts

  def export_hf(self, directory, dtype="float32"):
    """Writes a Hugging Face directory (config.json, model.safetensors, the tokenizer)."""
    family = self.family or families.for_model("llama", self.source)  # An LM made by hand: a Llama.
    hf.save(directory, family, self.module, self.variables["params"], self.tokenizer, self.context_length, dtype)
    logging.info("Wrote %s (%s, %s).", directory, family.architecture, dtype)

  def export_gguf(self, path, outtype="f32"):
    """Writes a GGUF file that llama.cpp runs: the model in `outtype` (f32, f16, bf16 or
    q8_0), its tokenizer and chat template."""
    family = self.family or families.for_model("llama", self.source)
    gguf.save(os.path.expanduser(str(path)), family, self.module, self.variables["params"], self.tokenizer,
              self.context_length, outtype)
    logging.info("Wrote %s (%s, %s).", path, family.gguf_arch, outtype)


def _check_tokenizer(tokenizer, module, source):
  if tokenizer.vocab_size > module.vocab_size:
    raise UserError(f"the tokenizer {tokenizer.path} has {tokenizer.vocab_size} ids but the model at {source} only "
                    f"{module.vocab_size}: they do not belong together")


def strategy_for(parallel_config=None):
  """The Strategy of a `config.parallel` section (a dict): where the variables go."""
  return parallel.Strategy(config_lib.Reader(ml_collections.ConfigDict(parallel_config or DEFAULT_PARALLEL)))


EXAMPLE = ([np.zeros((1, 8), np.int32)], {})  # Inputs to initialise a language model with.


def abstract_variables(module, strategy):
  """The shapes, dtypes and shardings of `module`'s variables under `strategy`."""
  return strategy.abstract_state(lambda: step_lib.init_variables(module, EXAMPLE, 0))


def _load_hf(directory, strategy, dtype, param_dtype):
  family, kwargs, extras = hf.read_config(directory)
  tokenizer = tokenizers.load(directory)
  module = family.module(**kwargs, dtype=dtype or "float32")
  _check_tokenizer(tokenizer, module, directory)  # Before reading gigabytes of weights.
  abstract = with_dtype(abstract_variables(module, strategy), param_dtype)
  variables = {"params": hf.load_params(directory, family, abstract["params"])}
  lm = LM(module, variables, tokenizer, extras["context_length"], directory, extras["eos_ids"], strategy)
  lm.family = family
  return lm


def _load_gguf(path, strategy, dtype, param_dtype):
  family, kwargs, extras, f = gguf.read_config(path)
  tokenizer = gguf_tokenizer.load(f)
  module = family.module(**kwargs, dtype=dtype or "float32")
  _check_tokenizer(tokenizer, module, path)
  abstract = with_dtype(abstract_variables(module, strategy), param_dtype)
  variables = {"params": gguf.load_params(f, family, abstract["params"], module)}
  lm = LM(module, variables, tokenizer, extras["context_length"], path, extras["eos_ids"], strategy)
  lm.family = family
  return lm


def with_dtype(abstract, dtype):
  """`abstract` (ShapeDtypeStructs) with floating leaves of `dtype` (None: unchanged)."""
  if dtype is None:
    return abstract
  dtype = jnp.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise UserError(f"param_dtype must be a floating dtype such as 'bfloat16', got {dtype}")
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, dtype, sharding=a.sharding)
                      if jnp.issubdtype(a.dtype, jnp.floating) else a, abstract)


def _load_run(workdir, step, strategy, dtype):
  raw = layout.read_config(workdir)
  cfg = config_lib.Reader(ml_collections.ConfigDict(raw))
  model_config = cfg.section("model")
  family = families.for_model(model_config.get("name", kind=str), f"the run in {workdir}")
  module = models.build(model_config)
  if dtype:
    module = module.clone(dtype=dtype)
  module = lora_lib.wrap(cfg.section("lora"), module, EXAMPLE)
  tokenizer = run_tokenizer(workdir, cfg.section("input").section("data"))
  _check_tokenizer(tokenizer, module, workdir)
  ckpt = checkpoint.Checkpointer(workdir, read_only=True)
  try:
    step = layout.pick_step(ckpt.all_steps(), step, workdir)
    variables = ckpt.restore_variables(step, abstract_variables(module, strategy))
  finally:
    ckpt.close()
  context = cfg.section("input").section("data").get("seq_len", kind=int)
  if not isinstance(module, lora_lib.LoRAModel):
    lm = LM(module, variables, tokenizer, context, f"{workdir} step {step}", strategy=strategy)
  else:  # LoRA: the adapters folded into the kernels, so decoding and export see the plain model.
    merged = {**variables, "params": lora_lib.merge(variables["params"], module.spec.scale)}
    lm = LM(module.base, merged, tokenizer, context, f"{workdir} step {step} (LoRA merged)", strategy=strategy)
    lm.lora = (module.spec, variables["params"])
  lm.family = family
  data = raw.get("input", {}).get("data", {})  # A run trained without the template drafts without it.
  lm.chat_replies = not isinstance(data, dict) or data.get("chat_template", "auto") != "none"
  return lm


def run_tokenizer(workdir, data_config):
  """A run's tokenizer: the copy training keeps in the work directory, else (runs from
  before it kept one) the one its config names or trained, found again in the data cache."""
  kept = layout.kept_tokenizer(workdir)
  return tokenizers.load(os.path.dirname(kept)) if kept else text_lib.tokenizer_from_config(data_config)
