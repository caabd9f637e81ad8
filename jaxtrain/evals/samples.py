"""Samples from a language model during training, for fixed prompts.

    config.evals.samples = dict(type='samples', prompts=('def ', 'class Stack:'),
                                max_new_tokens=64, every_steps=200)

Optional keys: temperature (0.0: greedy), top_k, top_p, seed (0), stop (strings), and
truncate_prompts (False): cut a prompt too long for the context to its last tokens, leaving
room for max_new_tokens (prompts taken from data, such as the email assistant's); a
conversation's last message is cut at its end instead (sampling.fit_text).
conversations: one per prompt, each a tuple of (role, content) pairs, used instead of the
prompts where the training data are rendered with the chat template (text.renders_chat):
the drafts are then prompted as the model was trained (rendered with the generation
prompt; the email assistant gives both, not knowing at config time which it will get).
The completions go to the run's samples.jsonl ({"step", "evaluator", "prompt",
"completion"}, one row per prompt) and to TensorBoard's text tab; metrics.jsonl gets only
numbers: mean_new_chars, the completions' mean length in characters.
"""

from jaxtrain.data import chat
from jaxtrain.data import text as text_lib
from jaxtrain.errors import UserError
from jaxtrain.evals import EVALUATORS
from jaxtrain.lm import sampling


@EVALUATORS.register("samples")
class Samples:
  metric_names = ("mean_new_chars",)

  def __init__(self, config, context):
    if not hasattr(context.model, "init_cache"):
      raise UserError(f"evaluator '{config.path('type')}'='samples' needs a language model that decodes with a KV "
                      f"cache (model 'llama'), not {type(context.model).__name__}")
    self.tokenizer = getattr(context.train_source, "tokenizer", None)
    if self.tokenizer is None:
      raise UserError(f"evaluator '{config.path('type')}'='samples' needs text training data (input.data with a "
                      f"tokenizer)")
    prompts = config.prompts
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
      raise UserError(f"config key '{config.path('prompts')}' must be a non-empty list of strings, got {prompts!r}")
    self.prompts = list(prompts)
    self.encoding = {}  # How complete() encodes the prompts: as the tokenizer does, or as rendered.
    conversations = config.get("conversations")
    stop = config.get("stop", ())
    max_new_tokens = config.get("max_new_tokens", 64, minimum=1)
    room = context.train_source.seq_len - max_new_tokens - 1
    truncate = config.get("truncate_prompts", False)
    if conversations is not None and _renders_chat(context.train_source, self.tokenizer):
      self.encoding = dict(add_bos=False, special_tokens=True)
      self.prompts = _rendered(self.tokenizer, conversations, len(self.prompts), config.path("conversations"),
                               room if truncate else None, self.encoding)
    elif truncate:  # Keep a plain prompt's end: what the model continues from.
      self.prompts = [_last_tokens(self.tokenizer, p, room) for p in self.prompts]
    self.options = dict(
        context_length=context.train_source.seq_len, max_new_tokens=max_new_tokens,
        temperature=config.get("temperature", 0.0, kind=float, minimum=0.0), top_k=config.get("top_k", kind=int),
        top_p=config.get("top_p", kind=float), seed=config.get("seed", 0, minimum=0),
        stop=[stop] if isinstance(stop, str) else list(stop), **self.encoding)
    self.sampler = sampling.Sampler(context.model, None, pad_id=self.tokenizer.pad_id,
                                    eos_ids=[] if self.tokenizer.eos_id is None else [self.tokenizer.eos_id])
    # At start-up: the prompts must fit the context, and the sampler compiles for them.
    ids = sampling.prompt_ids(self.tokenizer, self.prompts, self.options["context_length"],
                              where=config.path("prompts"), **self.encoding)
    room = self.options["context_length"] - max(map(len, ids))  # As `complete` will cap it.
    self.sampler.prepare(context.abstract_variables, list(map(len, ids)), min(self.options["max_new_tokens"], room),
                         **{k: self.options[k] for k in ("temperature", "top_k", "top_p")})
    self._texts = []

  def run(self, variables):
    completions = sampling.complete(self.sampler, self.tokenizer, self.prompts, **self.options, variables=variables)
    self._texts = [{"prompt": p, "completion": c} for p, c in zip(self.prompts, completions)]
    return {"mean_new_chars": sum(map(len, completions)) / len(completions)}

  def texts(self):
    """The prompts and completions of the last `run`, for samples.jsonl and TensorBoard."""
    return self._texts


def _last_tokens(tokenizer, prompt, count):
  """`prompt` cut to about its last `count` tokens (as text: samples.jsonl shows what the
  model read), or whole if it has no more."""
  # Counted with special-token text as text: decode gives that text back (it drops special
  # ids); parsed by `complete`, a spelled-out special token is one token, so it still fits
  # (prompt_ids checks at start-up).
  ids = tokenizer.encode(prompt)
  return prompt if len(ids) <= count else tokenizer.decode(ids[len(ids) - max(count, 1):])


def _renders_chat(source, tokenizer):
  dataset = getattr(source, "options", {}).get("dataset")
  return dataset is not None and text_lib.renders_chat(dataset, tokenizer)


def _rendered(tokenizer, conversations, count, where, max_tokens, encoding):
  """Each conversation rendered with the chat template and its generation prompt; with
  `max_tokens`, its last message cut at its end to fit (the system message stays)."""
  if isinstance(conversations, str) or len(conversations) != count:
    raise UserError(f"config key '{where}' must hold one conversation per prompt ({count}), got {conversations!r}")
  rendered = []
  for conversation in conversations:
    if not all(isinstance(turn, (list, tuple)) and len(turn) == 2 for turn in conversation):
      raise UserError(f"config key '{where}': each conversation is a tuple of (role, content) pairs, got "
                      f"{conversation!r}")
    messages = [{"role": role, "content": content} for role, content in conversation]
    prompt_of = lambda text, m=messages: chat.render_for(  # noqa: E731
        tokenizer, m[:-1] + [dict(m[-1], content=text)], add_generation_prompt=True)
    text = messages[-1]["content"]
    rendered.append(prompt_of(text if max_tokens is None else
                              sampling.fit_text(tokenizer, prompt_of, text, max_tokens, **encoding)))
  return rendered
