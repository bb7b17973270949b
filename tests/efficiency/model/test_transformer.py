"""The transformer: causality, segment isolation, scan equals unrolled, FLOP count, parameters."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from efficiency.backends.cpu import contraction_merged, merged_contraction_einsum
from efficiency.model.flops import flops_per_token, matmul_params
from efficiency.model.transformer import Transformer
from tests.helpers import random_packed_batch, tiny_model_config

ATOL = 1e-5


def build(rng, **overrides):
  cfg = ml_collections.FrozenConfigDict(tiny_model_config(**overrides))
  model = Transformer(cfg)
  tokens, segment_ids, positions = random_packed_batch(rng, 2, 24, cfg.vocab_size)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), tokens, segment_ids, positions)["params"]
  return Jitted(model), nn.meta.unbox(params), (tokens, segment_ids, positions)


class Jitted:
  """A model whose `apply` is jit-compiled (eager Linen is slow on CPU)."""

  def __init__(self, model: nn.Module):
    self.apply = jax.jit(model.apply)


@pytest.mark.parametrize("spec, x_shape, kernel_shape, merged", [
    ("tnh,nhd->td", (5, 3, 4), (3, 4, 6), "tZ,Zd->td"),
    ("btkgh,kghd->btd", (2, 3, 2, 2, 4), (2, 2, 4, 5), "btZ,Zd->btd"),
    ("td,dnh->tnh", (5, 6), (6, 3, 4), None),  # one contracted axis
    ("thn,nhd->td", (5, 4, 3), (3, 4, 6), None),  # contracted in another order
])
def test_merged_contraction_equals_einsum(rng, spec, x_shape, kernel_shape, merged):
  assert contraction_merged(spec) == merged
  x = rng.normal(size=x_shape).astype(np.float32)
  kernel = rng.normal(size=kernel_shape).astype(np.float32)
  np.testing.assert_allclose(merged_contraction_einsum(spec, x, kernel),
                             np.einsum(spec, x, kernel), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_causal(rng, scan_layers):
  model, params, _ = build(rng, scan_layers=scan_layers)
  t, cut = 20, 11
  tokens = rng.integers(1, 97, (2, t)).astype(np.int32)
  segment_ids = np.ones_like(tokens)
  positions = np.tile(np.arange(t, dtype=np.int32), (2, 1))
  changed = tokens.copy()
  changed[:, cut:] = rng.integers(1, 97, (2, t - cut))
  a = model.apply({"params": params}, tokens, segment_ids, positions)
  b = model.apply({"params": params}, changed, segment_ids, positions)
  np.testing.assert_allclose(a[:, :cut], b[:, :cut], atol=ATOL)
  assert not np.allclose(a[:, cut:], b[:, cut:], atol=1e-3)


def test_segments_are_isolated(rng):
  """Two packed documents: each one's logits equal those of the document run alone."""
  model, params, _ = build(rng)
  doc_a = rng.integers(1, 97, 9).astype(np.int32)
  doc_b = rng.integers(1, 97, 7).astype(np.int32)
  packed = np.concatenate([doc_a, doc_b, np.zeros(4, np.int32)])[None]
  segment_ids = np.array([[1] * 9 + [2] * 7 + [0] * 4], np.int32)
  positions = np.array([list(range(9)) + list(range(7)) + [0] * 4], np.int32)
  logits = model.apply({"params": params}, packed, segment_ids, positions)

  def alone(doc):
    n = len(doc)
    return model.apply(
        {"params": params}, doc[None], np.ones((1, n), np.int32), np.arange(n)[None]
    )[0]

  np.testing.assert_allclose(logits[0, :9], alone(doc_a), atol=1e-4)
  np.testing.assert_allclose(logits[0, 9:16], alone(doc_b), atol=1e-4)

  # Changing document b leaves document a untouched, and vice versa.
  other = packed.copy()
  other[0, 9:16] = rng.integers(1, 97, 7)
  logits2 = model.apply({"params": params}, other, segment_ids, positions)
  np.testing.assert_allclose(logits[0, :9], logits2[0, :9], atol=ATOL)


def test_scan_equals_unrolled(rng):
  scanned, params, batch = build(rng, scan_layers=True)
  unrolled = Jitted(
      Transformer(ml_collections.FrozenConfigDict(tiny_model_config(scan_layers=False)))
  )
  layer_params = {
      f"layers_{i}": jax.tree.map(lambda x, i=i: x[i], params["layers"]) for i in range(2)
  }
  unrolled_params = {k: v for k, v in params.items() if k != "layers"} | layer_params
  np.testing.assert_allclose(
      scanned.apply({"params": params}, *batch),
      unrolled.apply({"params": unrolled_params}, *batch),
      atol=ATOL,
  )


def test_scan_unroll_keeps_outputs_and_grads_and_removes_the_loop(rng):
  """`scan_unroll` changes how the layer scan compiles, not what it computes: 3 of 4 layers per
  iteration (a remainder) and all 4 give the outputs and gradients of 1 on the same parameters,
  and all 4 leave no loop in the compiled gradient."""
  _, params, batch = build(rng, num_layers=4)

  def grad_fn(unroll):
    m = Transformer(ml_collections.FrozenConfigDict(tiny_model_config(num_layers=4,
                                                                      scan_unroll=unroll)))
    return jax.jit(jax.value_and_grad(lambda p: jnp.mean(m.apply({"params": p}, *batch) ** 2)))

  grads = {unroll: grad_fn(unroll) for unroll in (1, 3, 4)}
  loss1, g1 = grads[1](params)
  for unroll in (3, 4):
    loss, g = grads[unroll](params)
    np.testing.assert_allclose(loss, loss1, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g, g1)
  loops = lambda unroll: grads[unroll].lower(params).compile().as_text().count(" while(")
  assert loops(1) >= 1 and loops(4) == 0


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_preserves_outputs_and_grads(rng, remat):
  model, params, batch = build(rng)
  rematted = Transformer(ml_collections.FrozenConfigDict(tiny_model_config(remat=remat)))
  plain = Transformer(ml_collections.FrozenConfigDict(tiny_model_config()))
  loss = lambda m: jax.jit(jax.grad(lambda p: jnp.mean(m.apply({"params": p}, *batch) ** 2)))
  g1 = loss(plain)(params)
  g2 = loss(rematted)(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g1, g2)


def test_bfloat16_compute_keeps_float32_params(rng):
  model, params, batch = build(rng, dtype="bfloat16")
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  logits = model.apply({"params": params}, *batch)
  reference, _, _ = build(rng)
  want = reference.apply({"params": params}, *batch)
  np.testing.assert_allclose(logits, want, atol=0.1)  # bf16 has ~3 significant digits


def test_untied_embeddings_add_an_unembedding(rng):
  _, tied, _ = build(rng)
  _, untied, _ = build(rng, tie_embeddings=False)
  count = lambda p: sum(x.size for x in jax.tree.leaves(p))
  assert count(untied) - count(tied) == 32 * 97
  assert untied["unembed"]["kernel"].shape == (32, 97)


def test_parameters_carry_logical_axes(rng):
  cfg = ml_collections.FrozenConfigDict(tiny_model_config())
  tokens, segment_ids, positions = random_packed_batch(rng, 1, 8, cfg.vocab_size)
  boxed = jax.jit(Transformer(cfg).init)(jax.random.PRNGKey(0), tokens, segment_ids, positions)
  specs = nn.get_partition_spec(boxed)["params"]
  assert tuple(specs["layers"]["attn"]["query"]["kernel"]) == ("layers", "embed", "heads",
                                                              "head_dim")
  assert tuple(specs["embed"]["embedding"]) == ("vocab", "embed")
  assert tuple(specs["layers"]["mlp"]["down"]["kernel"]) == ("layers", "mlp", "embed")


def test_flops_match_hand_count():
  """d=32, heads 4 x 8, kv 2, ff 64, vocab 97, 2 layers, T=24, counted by hand."""
  cfg = tiny_model_config()
  q_and_o = 2 * 32 * 32  # 4 heads x 8 dims each way
  k_and_v = 2 * 32 * 16  # 2 kv heads x 8 dims
  mlp = 3 * 32 * 64
  per_layer = q_and_o + k_and_v + mlp  # 2048 + 1024 + 6144 = 9216
  assert matmul_params(cfg) == 2 * per_layer + 32 * 97 == 21536
  attention = 2 * 6 * 24 * 4 * 8  # layers x 6 x T x heads x head_dim
  assert flops_per_token(cfg, 24) == 6 * 21536 + attention == 138432


def test_flops_count_equals_model_matmul_params(rng):
  """matmul_params equals the model's parameters minus embedding (tied) and norm scales."""
  cfg = tiny_model_config()
  _, params, _ = build(rng)
  total = sum(x.size for x in jax.tree.leaves(params))
  norms = (2 * cfg.num_layers + 1) * cfg.d_model
  # The tied embedding is the logits projection too, so it is counted once (as d x V).
  assert matmul_params(cfg) == total - norms
