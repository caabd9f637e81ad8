"""KV-cache sampling: greedy equals the argmax of the full forward pass at every position,
for batched prompts of different lengths; shapes compile once per bucket; EOS, stop
strings, seeds, top-k and top-p behave."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain.data import tokenizers
from jaxtrain.errors import UserError
from jaxtrain.lm import sampling
from jaxtrain.models.llama import Llama
from test_tokenizers import CHAT, CHAT_AS_TOKENS, word_level

PROMPTS = [[1, 5, 9, 3, 4], [1, 7], list(range(1, 14))]


def model_and_variables(scan_layers=False, **more):
  model = Llama(vocab_size=97, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64,
                scan_layers=scan_layers, **more)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32), train=False)
  # Larger weights than the 0.02 initialisation: peaked distributions, no near-ties in argmax.
  return model, jax.tree.map(lambda x: x * 4, variables)


def full_forward_argmax(model, variables, sequence):
  logits, _ = model.apply(variables, jnp.asarray([sequence]), train=False)
  return np.asarray(jnp.argmax(logits[0], axis=-1))


@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.parametrize("rope_scaling", [None, dict(rope_type="llama3", factor=8.0, original_max_position_embeddings=16)])
def test_greedy_equals_the_argmax_of_the_full_forward_at_every_position(scan_layers, rope_scaling):
  model, variables = model_and_variables(scan_layers, rope_scaling=rope_scaling)
  sampler = sampling.Sampler(model, variables, pad_id=0, chunk=8)
  outputs = sampler.generate(PROMPTS, 20)
  for prompt, new in zip(PROMPTS, outputs):
    assert len(new) == 20
    expected = full_forward_argmax(model, variables, prompt + new)[len(prompt) - 1:-1]
    assert new == expected.tolist()


def test_prompt_lengths_and_tokens_within_a_bucket_compile_once():
  model, variables = model_and_variables()
  sampler = sampling.Sampler(model, variables, pad_id=0, chunk=8)
  sampler.generate([[1, 2, 3, 4, 5]], 16)
  traces = sampler.traces
  assert traces == 2  # The prefill and the decode loop.
  sampler.generate([list(range(1, 13))], 16)   # 5 and 12 tokens: both in the bucket of 16.
  sampler.generate([[1, 2]], 10)               # 10 new tokens: two chunks of 8, as 16.
  assert sampler.traces == traces
  sampler.generate([list(range(1, 20))], 16)   # 19 tokens: the next bucket, 32, and a longer cache.
  assert sampler.traces == traces + 2


def test_a_row_stops_at_eos_and_the_others_go_on():
  model, variables = model_and_variables()
  free = sampling.Sampler(model, variables, pad_id=0, chunk=8).generate(PROMPTS, 12)
  eos = free[0][3]  # The 4th token row 0 generates: make it the EOS.
  stopped = sampling.Sampler(model, variables, eos_ids=[eos], pad_id=0, chunk=8).generate(PROMPTS, 12)
  for row, new in zip(free, stopped):
    cut = row.index(eos) if eos in row else len(row)
    assert new == row[:cut]
  assert len(stopped[0]) == free[0].index(eos) <= 3


def test_no_decode_step_runs_past_max_new_tokens_or_past_every_rows_eos():
  """n new tokens take the prefill and n - 1 decode steps, whatever the chunk; every row at
  its EOS ends the loop inside a chunk."""
  model, variables = model_and_variables()
  sampler = sampling.Sampler(model, variables, pad_id=0, chunk=8)
  free = sampler.generate(PROMPTS, 20)
  assert sampler.decode_steps == 19  # Not 24, three whole chunks.
  first = sampler.generate(PROMPTS, 1)
  assert sampler.decode_steps == 0 and first == [row[:1] for row in free]
  one = [PROMPTS[0]]
  row = sampler.generate(one, 12)[0]
  eos = row[3]
  stopper = sampling.Sampler(model, variables, eos_ids=[eos], pad_id=0, chunk=8)
  cut = row.index(eos)
  assert stopper.generate(one, 12) == [row[:cut]]
  assert stopper.decode_steps == cut  # The step that chose the EOS was the last: not the chunk's 8.


def test_sampling_is_seeded_and_top_k_1_is_greedy():
  model, variables = model_and_variables()
  sampler = sampling.Sampler(model, variables, pad_id=0, chunk=8)
  a = sampler.generate(PROMPTS, 16, temperature=1.0, seed=3)
  assert a == sampler.generate(PROMPTS, 16, temperature=1.0, seed=3)
  assert a != sampler.generate(PROMPTS, 16, temperature=1.0, seed=4)
  assert sampler.generate(PROMPTS, 16, temperature=1.0, top_k=1, seed=5) == sampler.generate(PROMPTS, 16)


def test_choose_keeps_to_top_k_and_top_p():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 2000))
  draw = lambda **kw: np.asarray(sampling.choose(  # noqa: E731
      logits, jax.random.key(0), jnp.float32(1.0), jnp.int32(kw.get("k", 1)), jnp.float32(kw.get("p", 1.0)),
      False, "k" in kw, "p" in kw))
  counts = np.bincount(draw(), minlength=4) / 2000
  np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.04)  # Plain sampling: the distribution.
  assert set(draw(k=2).tolist()) == {0, 1}
  assert set(draw(p=0.7).tolist()) == {0, 1}      # 0.5 < 0.7 <= 0.8: the first two.
  assert set(draw(p=0.5).tolist()) == {0}         # The first alone holds 0.5.
  assert set(draw(k=3, p=0.99).tolist()) == {0, 1, 2}


class CharTokenizer:
  """One id per character (ids 3..), bos 1 (put first, as a SentencePiece model's), eos 2:
  enough for `complete`."""

  bos_id, eos_id, pad_id, vocab_size, adds_bos = 1, 2, 0, 97, True

  def encode(self, text, special_tokens=False):  # pylint: disable=unused-argument
    return [3 + (ord(c) % 94) for c in text]

  def decode(self, ids):
    return "".join(chr(33 + (i - 3) % 94) if i > 2 else "?" for i in ids)  # One character per id.


def test_complete_cuts_before_a_stop_string_and_checks_the_context():
  model, variables = model_and_variables()
  sampler = sampling.Sampler(model, variables, pad_id=0, chunk=8)
  tok = CharTokenizer()
  full = sampling.complete(sampler, tok, ["abc"], context_length=64, max_new_tokens=16)[0]
  assert len(full) == 16
  stop = full[5:7]
  cut = sampling.complete(sampler, tok, ["abc"], context_length=64, max_new_tokens=16, stop=[stop])[0]
  assert cut == full[:full.find(stop)]
  with pytest.raises(Exception, match=r"prompt 1 is 64 tokens, which leaves no room in the model's context of 64"):
    sampling.complete(sampler, tok, ["a", "b" * 63], context_length=64)
  # A completion that would run past the context is shortened to fit.
  assert len(sampling.complete(sampler, tok, ["x" * 50], context_length=64, max_new_tokens=40)[0]) == 13


def test_prompt_ids_put_bos_first_as_the_tokenizer_does_and_parse_special_tokens(tmp_path):
  """A tokenizer.json without a post-processor (SmolLM2's) adds no BOS, one with a
  TemplateProcessing (Llama's) does; add_bos=True/False overrides either."""
  plain = tokenizers.load(word_level(tmp_path / "plain"))
  llama = tokenizers.load(word_level(tmp_path / "llama", bos_first=True))
  assert sampling.prompt_ids(plain, [CHAT], 64) == [CHAT_AS_TOKENS]
  assert sampling.prompt_ids(llama, [CHAT], 64) == [[1] + CHAT_AS_TOKENS]
  assert sampling.prompt_ids(plain, [CHAT], 64, add_bos=True) == [[1] + CHAT_AS_TOKENS]
  assert sampling.prompt_ids(llama, [CHAT], 64, add_bos=False) == [CHAT_AS_TOKENS]
  assert sampling.prompt_ids(plain, [CHAT], 64, special_tokens=False) == [plain.encode(CHAT)]  # Untrusted text.


def test_bad_sampling_settings_are_one_line():
  model, variables = model_and_variables()
  sampler = sampling.Sampler(model, variables, pad_id=0)
  with pytest.raises(UserError, match=r"sampling needs temperature >= 0, 0 < top_p <= 1 and top_k >= 1; got "
                                      r"temperature=1.0, top_p=None, top_k=0"):
    sampler.generate(PROMPTS, 4, temperature=1.0, top_k=0)
