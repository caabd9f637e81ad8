"""The Llama model against a numpy reference of Hugging Face's LlamaForCausalLM forward."""

import functools
import json
import re

import flax.linen
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from conftest import tiny_lm
from jaxtrain.config import Reader
from jaxtrain.errors import UserError
from jaxtrain.lm import language_model as lm
from jaxtrain import models
from jaxtrain.models.llama import Llama, attention, flops_per_token, sharding_rules
from jaxtrain import train

TINY = dict(vocab_size=61, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=48)


def apply(model, params, tokens, **kwargs):
  """Jitted: op by op, a forward pass takes seconds on CPU."""
  return jax.jit(lambda p, t, kw: model.apply({"params": p}, t, train=False, **kw))(params, tokens, kwargs)


def init(model, tokens, shapes_only=True):
  """random_params needs only the shapes: eval_shape skips running the init op by op."""
  fn = lambda: model.init({"params": jax.random.PRNGKey(0)}, tokens, train=False)["params"]
  return jax.eval_shape(fn) if shapes_only else jax.jit(fn)()


def random_params(params, seed=0):
  """Values far from the 0.02-normal init, so that every weight visibly moves the logits."""
  rng = np.random.default_rng(seed)

  def draw(path, x):
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    if name.endswith("scale"):
      return 1 + 0.2 * rng.standard_normal(x.shape)
    if name.endswith("kernel"):
      return rng.standard_normal(x.shape) / np.sqrt(x.shape[-2])
    return rng.standard_normal(x.shape)

  return jax.tree_util.tree_map_with_path(lambda p, x: np.asarray(draw(p, x), np.float32), params)


def tokens_of(shape, vocab=TINY["vocab_size"], seed=1):
  return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


# ---- A numpy Hugging Face Llama, on an HF-layout state dict (torch Linear: [out, in]) -------


def to_hf(params, num_layers, tied):
  """The conversion the module docstring documents, run backwards: rename, transpose kernels."""
  sd = {"model.embed_tokens.weight": params["embed_tokens"]["embedding"], "model.norm.weight": params["norm"]["scale"]}
  for i in range(num_layers):
    layer = params[f"layers_{i}"]
    for group, names in (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")), ("mlp", ("gate_proj", "up_proj", "down_proj"))):
      for name in names:
        sd[f"model.layers.{i}.{group}.{name}.weight"] = layer[group][name]["kernel"].T
    for norm in ("input_layernorm", "post_attention_layernorm"):
      sd[f"model.layers.{i}.{norm}.weight"] = layer[norm]["scale"]
  sd["lm_head.weight"] = sd["model.embed_tokens.weight"] if tied else params["lm_head"]["kernel"].T
  return {k: np.asarray(v, np.float64) for k, v in sd.items()}


def hf_logits(sd, tokens, num_layers, num_heads, num_kv_heads, head_dim, theta, eps):
  def rms_norm(x, weight):
    return weight * (x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + eps))

  def rotate_half(x):
    return np.concatenate([-x[..., head_dim // 2:], x[..., :head_dim // 2]], axis=-1)

  def heads(x, n):  # [B, T, n * hd] -> [B, n, T, hd]
    return x.reshape(b, t, n, head_dim).transpose(0, 2, 1, 3)

  b, t = tokens.shape
  inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)
  freqs = np.arange(t)[:, None] * inv_freq[None, :]
  cos, sin = np.cos(np.concatenate([freqs, freqs], -1)), np.sin(np.concatenate([freqs, freqs], -1))
  causal = np.tril(np.ones((t, t), bool))
  x = sd["model.embed_tokens.weight"][np.asarray(tokens)]
  for i in range(num_layers):
    w = {k[len(f"model.layers.{i}."):]: v for k, v in sd.items() if k.startswith(f"model.layers.{i}.")}
    h = rms_norm(x, w["input_layernorm.weight"])
    q = heads(h @ w["self_attn.q_proj.weight"].T, num_heads)
    k = heads(h @ w["self_attn.k_proj.weight"].T, num_kv_heads)
    v = heads(h @ w["self_attn.v_proj.weight"].T, num_kv_heads)
    q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    # repeat_kv: query head n reads key-value head n // (num_heads // num_kv_heads).
    k, v = np.repeat(k, num_heads // num_kv_heads, axis=1), np.repeat(v, num_heads // num_kv_heads, axis=1)
    scores = np.where(causal, q @ k.transpose(0, 1, 3, 2) / np.sqrt(head_dim), -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    attn = (probs @ v).transpose(0, 2, 1, 3).reshape(b, t, num_heads * head_dim)
    x = x + attn @ w["self_attn.o_proj.weight"].T
    h = rms_norm(x, w["post_attention_layernorm.weight"])
    gate, up = h @ w["mlp.gate_proj.weight"].T, h @ w["mlp.up_proj.weight"].T
    x = x + (gate / (1 + np.exp(-gate)) * up) @ w["mlp.down_proj.weight"].T
  return rms_norm(x, sd["model.norm.weight"]) @ sd["lm_head.weight"].T


@pytest.mark.parametrize("config", [
    dict(TINY),
    # Multi-query, tied, a head_dim that is not dim // num_heads, Llama-3's theta and eps.
    dict(TINY, num_kv_heads=1, tie_embeddings=True, head_dim=12, rope_theta=500000.0, norm_eps=1e-6),
], ids=["gqa", "mqa_tied_headdim"])
def test_matches_the_hugging_face_forward(config):
  model = Llama(**config)
  tokens = tokens_of((2, 11))
  params = random_params(init(model, tokens))
  logits, out = apply(model, params, tokens)
  expected = hf_logits(to_hf(params, model.num_layers, model.tie_embeddings), tokens, model.num_layers,
                       model.num_heads, model.kv_heads, model.head_size, model.rope_theta, model.norm_eps)
  assert logits.dtype == jnp.float32 and out["pre_logits"].shape == (2, 11, 32)
  assert np.abs(expected).mean() > 0.5  # The comparison is not of near-zeros.
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
  assert ("lm_head" in params) == (not model.tie_embeddings)


def test_param_tree_mirrors_hugging_face():
  params = init(Llama(**TINY), tokens_of((1, 4)), shapes_only=False)
  layer = {"input_layernorm": {"scale": (32,)}, "post_attention_layernorm": {"scale": (32,)},
           "self_attn": {"q_proj": {"kernel": (32, 32)}, "k_proj": {"kernel": (32, 16)},
                         "v_proj": {"kernel": (32, 16)}, "o_proj": {"kernel": (32, 32)}},
           "mlp": {"gate_proj": {"kernel": (32, 48)}, "up_proj": {"kernel": (32, 48)}, "down_proj": {"kernel": (48, 32)}}}
  assert jax.tree.map(lambda x: x.shape, params) == {
      "embed_tokens": {"embedding": (61, 32)}, "layers_0": layer, "layers_1": layer,
      "norm": {"scale": (32,)}, "lm_head": {"kernel": (32, 61)}}
  assert np.std(params["layers_0"]["mlp"]["up_proj"]["kernel"]) == pytest.approx(0.02, rel=0.1)
  assert np.all(params["norm"]["scale"] == 1)


def test_packed_documents_see_only_themselves():
  model = Llama(**TINY)
  doc_a, doc_b = tokens_of((1, 5), seed=2), tokens_of((1, 7), seed=3)
  packed = jnp.concatenate([doc_a, doc_b, jnp.zeros((1, 4), jnp.int32)], axis=1)
  segment_ids = jnp.asarray([[1] * 5 + [2] * 7 + [0] * 4])
  positions = jnp.asarray([list(range(5)) + list(range(7)) + list(range(4))])
  params = random_params(init(model, packed))
  logits, _ = apply(model, params, packed, segment_ids=segment_ids, positions=positions)
  alone_a, _ = apply(model, params, doc_a)
  alone_b, _ = apply(model, params, doc_b)
  np.testing.assert_allclose(logits[:, :5], alone_a, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logits[:, 5:12], alone_b, rtol=1e-5, atol=1e-5)
  # Without the segments, doc_b would attend to doc_a.
  unsegmented, _ = apply(model, params, packed, positions=positions)
  assert np.abs(unsegmented[:, 5:12] - alone_b).max() > 1e-2


def test_padding_rows_are_finite():
  model = Llama(**TINY)
  tokens = tokens_of((2, 9))
  segment_ids = jnp.asarray([[1] * 6 + [0] * 3, [0] * 9])
  params = random_params(init(model, tokens))

  def loss(params):
    logits, _ = apply(model, params, tokens, segment_ids=segment_ids)
    return jnp.sum(logits**2 * (segment_ids > 0)[..., None]), logits

  grads, logits = jax.jit(jax.grad(loss, has_aux=True))(params)
  assert np.all(np.isfinite(logits))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def stack_layers(params, num_layers):
  rest = {k: v for k, v in params.items() if not k.startswith("layers_")}
  return {**rest, "layers": jax.tree.map(lambda *xs: np.stack(xs), *[params[f"layers_{i}"] for i in range(num_layers)])}


def test_scanned_layers_compute_the_same():
  tokens = tokens_of((2, 8))
  params = random_params(init(Llama(**TINY), tokens))
  scanned = Llama(**TINY, scan_layers=True)
  stacked = stack_layers(params, 2)
  assert jax.tree.map(np.shape, stacked) == jax.tree.map(np.shape, init(scanned, tokens))
  segment_ids = jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 0], [1] * 8])  # The mask crosses the scan too.
  expected, _ = apply(Llama(**TINY), params, tokens, segment_ids=segment_ids)
  logits, _ = apply(scanned, stacked, tokens, segment_ids=segment_ids)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scan_layers", [False, True], ids=["loop", "scan"])
def test_remat_changes_no_number(scan_layers):
  # The loop gets one layer (its compile time grows with depth); the scan, two to carry.
  config = dict(TINY, num_layers=2 if scan_layers else 1)
  tokens = tokens_of((2, 8))
  params = random_params(init(Llama(**config), tokens))
  if scan_layers:
    params = stack_layers(params, 2)

  def loss_and_grads(remat):
    model = Llama(**config, dropout=0.1, scan_layers=scan_layers, remat=remat)

    def loss(params):  # In training, dropout on: remat must replay the same masks.
      logits, _ = model.apply({"params": params}, tokens, train=True, rngs={"dropout": jax.random.PRNGKey(3)})
      return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:]).mean()

    traced = jax.jit(jax.value_and_grad(loss)).trace(params)
    return traced.lower().compile()(params), str(traced.jaxpr)

  (loss, grads), jaxpr = loss_and_grads("none")
  assert "remat" not in jaxpr
  for remat in ("full", "dots"):
    (remat_loss, remat_grads), jaxpr = loss_and_grads(remat)
    assert "remat" in jaxpr  # jax.checkpoint's primitive: remat really is on.
    np.testing.assert_allclose(remat_loss, loss, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), remat_grads, grads)


def test_bfloat16_computes_with_float32_params():
  tokens = tokens_of((2, 8))
  model = Llama(**TINY, dtype="bfloat16")
  params = init(model, tokens)
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  params = random_params(params)
  logits, out = apply(model, params, tokens)
  expected, _ = apply(Llama(**TINY), params, tokens)
  assert logits.dtype == jnp.float32 and out["pre_logits"].dtype == jnp.bfloat16
  error = np.abs(logits - expected)
  assert 0 < error.mean() < 0.05 * np.abs(expected).mean() and error.max() < 0.5


@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.parametrize("tie_embeddings", [False, True])
def test_sharding_rules_fit_the_params(scan_layers, tie_embeddings):
  model = Llama(**TINY, scan_layers=scan_layers, tie_embeddings=tie_embeddings)
  shapes = init(model, jnp.zeros((1, 4), jnp.int32))
  arrays = {"params/" + jax.tree_util.keystr(path, simple=True, separator="/"): leaf.shape
            for path, leaf in jax.tree_util.tree_leaves_with_path(shapes)}
  specs = {}
  for pattern, spec in sharding_rules(scan_layers=scan_layers, tie_embeddings=tie_embeddings):
    matched = [name for name in arrays if re.search(pattern, name)]
    assert matched, pattern
    for name in matched:
      assert len(spec) == len(arrays[name]), (name, spec)
      assert re.search(pattern, name.replace("params/", "opt_state/0/mu/"))  # The moments follow.
      specs.setdefault(name, spec)
  lead = (None,) if scan_layers else ()
  layer = "params/layers/" if scan_layers else "params/layers_1/"
  assert specs[layer + "self_attn/k_proj/kernel"] == lead + (None, "tensor")
  assert specs[layer + "mlp/down_proj/kernel"] == lead + ("tensor", None)
  assert specs["params/embed_tokens/embedding"] == ("tensor", None)
  assert ("params/lm_head/kernel" in specs) == (not tie_embeddings)
  assert not any("norm" in name for name in specs)  # Replicated (FSDP may still split them).
  # A rule set for the other layout matches no layer, rather than misplacing the stacked axis.
  other = sharding_rules(scan_layers=not scan_layers, tie_embeddings=tie_embeddings)
  assert not any(re.search(other[0][0], name) for name in arrays)


def test_flops_per_token():
  model = Llama(vocab_size=1000, dim=64, num_layers=3, num_heads=8, num_kv_heads=2, mlp_dim=160)
  # Per layer: q 64x64, k and v 64x16 each, o 64x64, gate/up/down 64x160 each.
  per_layer = 64 * 64 + 2 * 64 * 16 + 64 * 64 + 3 * 64 * 160   # 40960
  matmuls = 3 * per_layer + 64 * 1000                            # 186880
  attention = 6 * 3 * 128 * 8 * 8                                # 147456: the causal half of 12*L*T*N*hd
  assert flops_per_token(model, 128) == 6 * matmuls + attention == 1268736
  assert flops_per_token(model.clone(tie_embeddings=True), 128) == 1268736  # The unembedding is still a matmul.


def test_mlp_dim_default_is_metas_rule():
  assert Llama(vocab_size=8, dim=4096, num_heads=32).hidden_size == 11008  # Llama-2 7B.
  assert Llama(vocab_size=8, dim=256).hidden_size == 768


def build(**values):
  return models.build(Reader(ml_collections.ConfigDict({"model": dict(name="llama", **values)})).model)


def test_built_from_the_config_and_bad_values_refused():
  model = build(vocab_size=61, dim=32, num_layers=1, num_heads=4, scan_layers=True, remat="dots")
  assert isinstance(model, Llama) and model.kv_heads == 4 and model.head_size == 8
  with pytest.raises(ValueError, match="model.remat must be one of 'none', 'full', 'dots', got 'ful'"):
    Llama(vocab_size=8, remat="ful")
  with pytest.raises(UserError, match="got 'ful'"):  # The launcher prints it as one line.
    build(vocab_size=8, remat="ful")
  with pytest.raises(ValueError, match="num_kv_heads=3 must divide model.num_heads=4"):
    Llama(vocab_size=8, num_kv_heads=3)


# ---- Dropout: embedding, attention probabilities, residual branches (training only) ----------

RATES = ("embedding_dropout", "attention_dropout", "residual_dropout")
ALL_RATES = dict.fromkeys(RATES, 0.3)


def train_logits(model, params, tokens, seed=3):
  """train=True with the dropout rng; jitted like `apply`, compiled once per model."""
  return _train_logits(model, params, tokens, jax.random.PRNGKey(seed))


@functools.partial(jax.jit, static_argnums=0)
def _train_logits(model, params, tokens, rng):
  return model.apply({"params": params}, tokens, train=True, rngs={"dropout": rng})[0]


@pytest.mark.parametrize("key", RATES + ("dropout",))
@pytest.mark.parametrize("value", [-0.1, 1.0, float("nan"), "0.1"])
def test_dropout_rates_outside_0_1_are_refused(key, value):
  with pytest.raises(UserError, match=rf"model.{key}'? must be (a rate in \[0, 1\)|float), got"):
    build(vocab_size=8, **{key: value})


def test_dropout_and_residual_dropout_are_one_setting():
  with pytest.raises(UserError, match="model.dropout=0.1 is model.residual_dropout's older name: set one, not both"):
    build(vocab_size=8, dropout=0.1, residual_dropout=0.2)
  assert build(vocab_size=8, dropout=0.0, residual_dropout=0.2).residual_rate == 0.2  # tiny_lm and code_lm set 0.0.
  assert build(vocab_size=8, dropout=0.2).residual_rate == 0.2


@pytest.mark.parametrize("scan_layers", [False, True], ids=["loop", "scan"])
def test_dropout_rates_change_nothing_at_evaluation_and_decoding(scan_layers):
  tokens = tokens_of((2, 8))
  plain, dropped = Llama(**TINY, scan_layers=scan_layers), Llama(**TINY, **ALL_RATES, scan_layers=scan_layers)
  params = random_params(init(plain, tokens))
  np.testing.assert_array_equal(apply(dropped, params, tokens)[0], apply(plain, params, tokens)[0])
  segment_ids = jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 0], [1] * 8])
  np.testing.assert_array_equal(apply(dropped, params, tokens, segment_ids=segment_ids)[0],
                                apply(plain, params, tokens, segment_ids=segment_ids)[0])

  def decode(model, params):  # Prefill 8 tokens into a 10-slot cache (only_last), then one more token.
    valid = jnp.ones((2, 10), bool)
    logits, out = model.apply({"params": params}, tokens, train=False, cache=model.init_cache(2, 10), cache_index=0,
                              key_valid=valid, only_last=True)
    step, _ = model.apply({"params": params}, tokens[:, :1], train=False, cache=out["cache"], cache_index=8,
                          key_valid=valid)
    return logits, step

  decoded = [jax.jit(decode, static_argnums=0)(model, params) for model in (dropped, plain)]
  for got, expected in zip(*decoded):
    np.testing.assert_array_equal(got, expected)


def test_zero_rates_in_training_draw_no_rng_and_change_no_bit():
  tokens = tokens_of((2, 8))
  model = Llama(**TINY, **dict.fromkeys(RATES, 0.0))
  params = random_params(init(model, tokens))
  # No 'dropout' rng passed: a rate of 0 must not ask for one.
  trained = jax.jit(lambda p, t: model.apply({"params": p}, t, train=True)[0])(params, tokens)
  np.testing.assert_array_equal(trained, apply(Llama(**TINY), params, tokens)[0])


@pytest.mark.parametrize("key", RATES)
def test_each_rate_drops_in_training_a_function_of_the_rng(key):
  tokens = tokens_of((2, 8))
  model = Llama(**TINY, **{key: 0.1})
  params = random_params(init(model, tokens))
  evaluated = apply(model, params, tokens)[0]
  first, again, other = (train_logits(model, params, tokens, seed) for seed in (3, 3, 4))
  assert np.abs(first - evaluated).max() > 1e-3
  assert np.abs(first - other).max() > 1e-3
  np.testing.assert_array_equal(first, again)
  assert np.all(np.isfinite(first))


def test_dropout_is_residual_dropouts_older_name():
  tokens = tokens_of((2, 8))
  params = random_params(init(Llama(**TINY), tokens))
  np.testing.assert_array_equal(train_logits(Llama(**TINY, dropout=0.2), params, tokens),
                                train_logits(Llama(**TINY, residual_dropout=0.2), params, tokens))


@pytest.mark.parametrize("heads", [(4, 2), (4, 4)], ids=["gqa", "mha"])
def test_written_out_attention_is_the_fused_one(heads):
  n, kv = heads
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.standard_normal((2, 6, n, 8)), jnp.float32)
  k, v = (jnp.asarray(rng.standard_normal((2, 6, kv, 8)), jnp.float32) for _ in range(2))
  segment_ids = jnp.asarray([[1, 1, 2, 2, 2, 0], [1] * 6])
  mask = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
  for mask_, causal in ((None, True), (mask, True), (mask, False)):
    expected = jax.nn.dot_product_attention(q, k, v, mask=mask_, is_causal=causal)
    np.testing.assert_allclose(attention(q, k, v, mask_, causal, lambda p: p), expected, rtol=1e-5, atol=1e-6)


def test_scanned_layers_draw_their_own_masks():
  """Each layer of the scan its own masks (split_rngs); the loop's layers have their own
  names and so their own masks too. Scan and loop draw different masks for one rng: the
  same distribution, another stream (as any change of layout)."""
  tokens = tokens_of((2, 8))
  model = Llama(**TINY, residual_dropout=0.5, attention_dropout=0.5, scan_layers=True)
  params = random_params(init(model, tokens))
  _, state = jax.jit(lambda p, r: model.apply(
      {"params": p}, tokens, train=True, rngs={"dropout": r}, mutable=["intermediates"],
      capture_intermediates=lambda module, _: isinstance(module, flax.linen.Dropout)))(params, jax.random.PRNGKey(3))
  layers = state["intermediates"]["layers"]
  residual = np.stack([a == 0 for a in layers["Dropout_0"]["__call__"]])  # [2 calls, 2 layers, B, T, D]
  probs = np.asarray(layers["self_attn"]["Dropout_0"]["__call__"][0])  # [2 layers, B, K, G, T, S]
  causal = np.tril(np.ones((8, 8), bool))
  dropped_probs = (probs == 0)[..., causal]  # Above the diagonal the probabilities are 0 anyway.
  for masks in (residual[0], residual[1], dropped_probs):
    assert 0.4 < masks.mean() < 0.6
    assert 0.4 < (masks[0] != masks[1]).mean() < 0.6  # Independent: they differ in about half.
  assert 0.4 < (residual[0] != residual[1]).mean() < 0.6  # The attention and MLP branches too.


def test_remat_replays_every_dropout_mask():
  """As test_remat_changes_no_number, with every rate on; the scan only (remat inside
  nn.scan, each layer with its own rng, is where the lifting could go wrong)."""
  config = dict(TINY, **dict.fromkeys(RATES, 0.1))
  tokens = tokens_of((2, 8))
  params = stack_layers(random_params(init(Llama(**config), tokens)), 2)

  def loss_and_grads(remat):
    model = Llama(**config, scan_layers=True, remat=remat)

    def loss(params):
      logits, _ = model.apply({"params": params}, tokens, train=True, rngs={"dropout": jax.random.PRNGKey(3)})
      return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:]).mean()

    return jax.jit(jax.value_and_grad(loss))(params)

  loss, grads = loss_and_grads("none")
  for remat in ("full", "dots"):
    remat_loss, remat_grads = loss_and_grads(remat)
    np.testing.assert_allclose(remat_loss, loss, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), remat_grads, grads)


def test_tiny_lm_trains_with_dropout_and_evaluates_deterministically(tfds_dir, corpus, tmp_path):
  config = tiny_lm(corpus)
  config.model.update(embedding_dropout=0.1, attention_dropout=0.1, residual_dropout=0.1)
  workdir = str(tmp_path / "run")
  train.run(config, workdir)
  with open(f"{workdir}/metrics.jsonl", encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  losses = [r["train/loss"] for r in rows if "train/loss" in r]
  assert losses[-1] < losses[0] - 1.0
  assert all(np.isfinite(r["val/loss"]) for r in rows if "val/loss" in r)
  model = lm.load(workdir)
  assert (model.module.attention_dropout, model.module.residual_rate) == (0.1, 0.1)
  tokens = np.asarray(tokens_of((2, 16), vocab=384))
  first = model.logits(tokens)
  np.testing.assert_array_equal(model.logits(tokens), first)
  plain = model.module.clone(**dict.fromkeys(RATES, 0.0))
  np.testing.assert_array_equal(apply(plain, model.variables["params"], jnp.asarray(tokens))[0], first)
