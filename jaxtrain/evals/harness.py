"""k-shot evaluation of a language model on a task (jaxtrain.evals.lm_tasks): builds the
contexts, tokenizes and compiles at `prepare` (so an evaluator fails or compiles at
start-up), scores at `run`. Shared by the `multiple_choice` / `generation` evaluators
and `python -m jaxtrain.lm_eval` (through `evaluate`, which notebooks can call too).

Multiple choice: every (context, target_delimiter + choice) pair of the task is scored in
one pass of length-bucketed batches (jaxtrain.evals.loglikelihood) and the sums regrouped
by document on the host. Generation: greedy completions through the KV-cache sampler,
prompts cut from the left to leave `max_gen_toks` of room, each completion ended before
the first `until` string.
"""

import dataclasses
import math
import time

from absl import logging

from jaxtrain.errors import UserError
from jaxtrain.evals import lm_tasks
from jaxtrain.evals.loglikelihood import Scorer, encode_pairs
from jaxtrain.lm import sampling

METRICS = {lm_tasks.MULTIPLE_CHOICE: ("acc", "acc_norm"), lm_tasks.GENERATION: ("exact_match",)}


@dataclasses.dataclass
class Prepared:
  task: lm_tasks.Task
  num_fewshot: int
  contexts: list
  docs: list
  pairs: list = None       # Multiple choice: token ids of every (context, choice) pair.
  owners: list = None      # The document of each pair.
  prompts: list = None     # Generation: the prompts' token ids.
  max_new_tokens: int = 0


def metric_names(kind):
  names = []
  for name in METRICS[kind]:
    names += [name, f"{name}_stderr"]
  return tuple(names) + ("n",)


class Harness:
  """Scores tasks with `module` (its variables given at `run`) placed by `strategy`."""

  def __init__(self, module, strategy, abstract_variables, tokenizer, context_length, *, eos_ids=(),
               add_bos=None, batch_tokens=8192, generation_batch=16):
    # None: as the harness, BOS first where the tokenizer itself adds one.
    self.add_bos = tokenizer.adds_bos if add_bos is None else add_bos
    self.tokenizer, self.context_length = tokenizer, context_length
    self.abstract = abstract_variables
    self.scorer = Scorer(module, strategy, abstract_variables, context_length, batch_tokens,
                         pad_id=tokenizer.pad_id or 0)
    eos_ids = sorted(set(eos_ids) | ({tokenizer.eos_id} - {None}))
    self.sampler = sampling.Sampler(module, None, eos_ids=eos_ids, pad_id=tokenizer.pad_id)
    self.generation_batch = generation_batch

  def prepare(self, task, num_fewshot, seed=lm_tasks.FEWSHOT_SEED, limit=None):
    contexts = task.contexts(num_fewshot, seed, limit)
    docs = task.docs[:len(contexts)]
    prepared = Prepared(task, num_fewshot, contexts, docs)
    if task.kind == lm_tasks.MULTIPLE_CHOICE:
      requests, owners = [], []
      for i, (doc, context) in enumerate(zip(docs, contexts)):
        requests += [(context, task.target_delimiter + choice) for choice in doc["choices"]]
        owners += [i] * len(doc["choices"])
      try:
        prepared.pairs = encode_pairs(self.tokenizer, requests, self.add_bos)
        self.scorer.prepare(prepared.pairs)
      except UserError as e:
        raise UserError(f"task {task.name}: {e}") from None
      prepared.owners = owners
      return prepared
    room = self.context_length - 1
    prepared.max_new_tokens = min(task.max_gen_toks, room)
    bos = [self.tokenizer.bos_id] if self.add_bos and self.tokenizer.bos_id is not None else []
    keep = self.context_length - prepared.max_new_tokens
    # Cut from the left, as the harness does, to leave room for the completion; special
    # tokens in a context are their ids, as transformers encodes them.
    prepared.prompts = [(bos + list(self.tokenizer.encode(c, special_tokens=True)))[-keep:] for c in contexts]
    for batch in self._generation_batches(prepared.prompts):
      self.sampler.prepare(self.abstract, [len(prepared.prompts[i]) for i in batch], prepared.max_new_tokens)
    return prepared

  def _generation_batches(self, prompts):
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    return [order[i:i + self.generation_batch] for i in range(0, len(order), self.generation_batch)]

  def run(self, prepared, variables):
    """(summary {metric, metric_stderr, n}, per-document records)."""
    if prepared.pairs is not None:
      sums, _ = self.scorer.score(variables, prepared.pairs)
      per_doc = [[] for _ in prepared.docs]
      for owner, value in zip(prepared.owners, sums):
        per_doc[owner].append(float(value))
      records = [{"doc_id": i, "context": context, "loglikelihoods": lls, **lm_tasks.choice_results(doc, lls)}
                 for i, (doc, context, lls) in enumerate(zip(prepared.docs, prepared.contexts, per_doc))]
    else:
      completions = self.generate(prepared, variables)
      records = [{"doc_id": i, "context": context, "completion": completion, "answer": doc["answer"],
                  "exact_match": lm_tasks.exact_match(completion, doc["answer"])}
                 for i, (doc, context, completion) in enumerate(zip(prepared.docs, prepared.contexts, completions))]
    return lm_tasks.summary(records, METRICS[prepared.task.kind]), records

  def generate(self, prepared, variables):
    until = list(prepared.task.until)
    vocab = self.tokenizer.vocab_size
    text = lambda row: self.tokenizer.decode([i for i in row if i < vocab])  # noqa: E731
    stop = lambda row: any(u in text(row) for u in until)  # noqa: E731
    completions = [None] * len(prepared.prompts)
    for batch in self._generation_batches(prepared.prompts):
      rows = self.sampler.generate([prepared.prompts[i] for i in batch], prepared.max_new_tokens, stop=stop,
                                   variables=variables)
      for i, row in zip(batch, rows):
        completion = text(row)
        completions[i] = completion[:min((completion.find(u) for u in until if u in completion),
                                         default=len(completion))]
    return completions


def evaluate(model, tasks, num_fewshot, *, fewshot_seed=lm_tasks.FEWSHOT_SEED, limit=None, add_bos=None,
             batch_tokens=8192):
  """({task: summary}, {task: per-document records}, whether BOS went first) of a
  `jaxtrain.lm.LM` on `tasks` (lm_tasks.Task): what `python -m jaxtrain.lm_eval` reports.
  A NaN (the stderr of one document) comes back as None, as JSON has no NaN."""
  harness = Harness(model.module, model.strategy, model.variables, model.tokenizer, model.context_length,
                    eos_ids=model.eos_ids, add_bos=add_bos, batch_tokens=batch_tokens)
  results, samples = {}, {}
  for task in tasks:
    start = time.perf_counter()
    prepared = harness.prepare(task, num_fewshot, fewshot_seed, limit)
    compiled = time.perf_counter()
    summary, records = harness.run(prepared, model.variables)
    logging.info("%s: %d documents, %d-shot: prepared and compiled in %.1f s, scored in %.1f s.", task.name,
                 len(records), num_fewshot, compiled - start, time.perf_counter() - compiled)
    results[task.name] = {k: _json_number(v) for k, v in summary.items()}
    samples[task.name] = records
  return results, samples, harness.add_bos


def _json_number(value):
  return None if isinstance(value, float) and math.isnan(value) else value
