"""Zero- and few-shot language-model tasks as evaluators during training, scored as
lm-evaluation-harness (0.4) scores them (see jaxtrain.evals.lm_tasks for the task files).

    config.evals.next_line = dict(type='multiple_choice', task='tasks/next_line.jsonl',
                                  num_fewshot=5, every_steps=500)
    config.evals.arith = dict(type='generation', task='tasks/arith.jsonl', num_fewshot=2)

Optional keys: fewshot_file (a .jsonl of few-shot documents; default: the task's own
documents, never the one being scored), fewshot_seed (1234), limit (the first N
documents), add_bos_token (default: as the harness, BOS only where the tokenizer itself
adds one, as the tokenizers runs train do: a model trained by jaxtrain saw BOS at every
document start), batch_tokens (8192: tokens per scoring batch), max_gen_toks
and until (generation; default 256 and the few-shot delimiter). Metrics: acc, acc_stderr, acc_norm, acc_norm_stderr, n (multiple choice);
exact_match, exact_match_stderr, n (generation, whose completions also go to
samples.jsonl). The task's tokens are laid out and compiled at start-up.
"""

from jaxtrain import config as config_lib
from jaxtrain.errors import UserError
from jaxtrain.evals import EVALUATORS
from jaxtrain.evals import harness as harness_lib
from jaxtrain.evals import lm_tasks


class _KShot:
  kind = None

  def __init__(self, config, context):
    where = config.path("type")
    if not hasattr(context.model, "init_cache"):
      raise UserError(f"evaluator '{where}'='{self.kind}' needs a language model (model 'llama'), not "
                      f"{type(context.model).__name__}")
    tokenizer = getattr(context.train_source, "tokenizer", None)
    if tokenizer is None:
      raise UserError(f"evaluator '{where}'='{self.kind}' needs text training data (input.data with a tokenizer)")
    overrides = {}
    if self.kind == lm_tasks.GENERATION:
      until = config.get("until", None, kind=object)
      if until is not None:
        until = [until] if isinstance(until, str) else list(until)
        if not until or not all(isinstance(u, str) and u for u in until):
          raise UserError(f"config key '{config.path('until')}' must be a non-empty string or list of them")
        overrides["until"] = tuple(until)
      overrides["max_gen_toks"] = config.get("max_gen_toks", None, kind=int, minimum=1)
    self.task = lm_tasks.load(config.get("task", config_lib.REQUIRED, kind=str),
                              config.get("fewshot_file", None, kind=str), **overrides)
    if self.task.kind != self.kind:
      raise UserError(f"config key '{config.path('task')}': {self.task.name} holds {self.task.kind} documents; use "
                      f"type='{self.task.kind}'")
    self.harness = harness_lib.Harness(
        context.model, context.strategy, context.abstract_variables, tokenizer, context.train_source.seq_len,
        add_bos=config.get("add_bos_token", None, kind=bool), batch_tokens=config.get("batch_tokens", 8192, minimum=1))
    self.prepared = self.harness.prepare(
        self.task, config.get("num_fewshot", 0, minimum=0), config.get("fewshot_seed", lm_tasks.FEWSHOT_SEED),
        config.get("limit", None, kind=int, minimum=1))
    self.metric_names = harness_lib.metric_names(self.kind)
    self._texts = []

  def run(self, variables):
    summary, records = self.harness.run(self.prepared, variables)
    if self.kind == lm_tasks.GENERATION:
      self._texts = [{"prompt": r["context"], "completion": r["completion"], "answer": r["answer"]} for r in records]
    return summary


@EVALUATORS.register("multiple_choice")
class MultipleChoice(_KShot):
  kind = lm_tasks.MULTIPLE_CHOICE


@EVALUATORS.register("generation")
class Generation(_KShot):
  kind = lm_tasks.GENERATION

  def texts(self):
    """Prompt, completion and answer of every document of the last `run`."""
    return self._texts
