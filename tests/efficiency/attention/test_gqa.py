"""Attention: GQA against a plain multi-head reference, causality and segment isolation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from efficiency.attention.dot_product import grouped_attention
from efficiency.attention.gqa import GroupedQueryAttention
from efficiency.attention.masks import causal_segment_mask
from efficiency.backends import cpu
from efficiency.position.rope import apply_rope
from tests.helpers import random_packed_batch, tiny_model_config

ATOL = 1e-5  # float32 throughout


def naive_multihead(q, k, v, segment_ids):
  """Per head, per query: softmax over allowed keys, written with explicit loops over heads."""
  b, t, n, h = q.shape
  out = np.zeros_like(q)
  for bi in range(b):
    for head in range(n):
      scores = q[bi, :, head] @ k[bi, :, head].T / np.sqrt(h)
      allowed = np.tril(np.ones((t, t), bool))
      allowed &= segment_ids[bi][:, None] == segment_ids[bi][None, :]
      allowed &= segment_ids[bi][None, :] != 0
      scores = np.where(allowed, scores, -np.inf)
      with np.errstate(invalid="ignore"):
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs = probs / probs.sum(-1, keepdims=True)
      out[bi, :, head] = np.nan_to_num(probs) @ v[bi, :, head]
  return out


def test_grouped_attention_equals_naive_multihead(rng):
  b, t, n, h = 2, 12, 4, 8
  q, k, v = (rng.standard_normal((b, t, n, h)).astype(np.float32) for _ in range(3))
  _, segment_ids, positions = random_packed_batch(rng, b, t, vocab=10)
  mask = causal_segment_mask(segment_ids, segment_ids, positions, positions)
  got = grouped_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask)
  np.testing.assert_allclose(got, naive_multihead(q, k, v, segment_ids), atol=ATOL)


def _primitives(fn, *args) -> set[str]:
  return {e.primitive.name for e in jax.make_jaxpr(fn)(*args).jaxpr.eqns}


@pytest.mark.parametrize("keys_slots_last", [False, True])
@pytest.mark.parametrize("t", [1, 3, 6])  # queries per KV head 2, 6: multiply-reduce; 12: dots
def test_heads_major_cache_attention_equals_reference(rng, t, keys_slots_last):
  """Queries over a heads-major cache [B, K, S, H] (keys [B, K, H, S] with `keys_slots_last`;
  decode steps: multiply-reduce products; a longer call: dots) equal a per-head float64
  reference, with grouped heads, a mask over cache slots and a score bias."""
  b, s, n, kv, h = 2, 9, 4, 2, 8
  q = rng.standard_normal((b, t, n, h)).astype(np.float32)
  k, v = (rng.standard_normal((b, kv, s, h)).astype(np.float32) for _ in range(2))
  mask = rng.random((b, 1, t, s)) < 0.7
  mask[..., 0] = True
  bias = rng.standard_normal((1, n, t, s)).astype(np.float32)
  keys = np.swapaxes(k, 2, 3) if keys_slots_last else k
  got = grouped_attention(jnp.asarray(q), jnp.asarray(keys), jnp.asarray(v), jnp.asarray(mask),
                          jnp.asarray(bias), heads_major=True, keys_slots_last=keys_slots_last)
  want = np.zeros((b, t, n, h))
  for bi in range(b):
    for head in range(n):
      kh = head // (n // kv)
      scores = q[bi, :, head].astype(np.float64) @ k[bi, kh].T / np.sqrt(h) + bias[0, head]
      scores = np.where(mask[bi, 0], scores, -np.inf)
      probs = np.exp(scores - scores.max(-1, keepdims=True))
      want[bi, :, head] = (probs / probs.sum(-1, keepdims=True)) @ v[bi, kh]
  np.testing.assert_allclose(got, want, atol=ATOL)
  fn = lambda *a: grouped_attention(*a, heads_major=True, keys_slots_last=keys_slots_last)
  reduced = t * n // kv <= cpu.REDUCE_QUERIES
  assert ("dot_general" not in _primitives(fn, q, keys, v, mask)) == reduced


def test_gqa_module_with_all_kv_heads_equals_naive_mha(rng):
  """num_kv_heads = num_heads: the module equals projections + RoPE + naive attention."""
  cfg = ml_collections.FrozenConfigDict(tiny_model_config(num_kv_heads=4, qkv_bias=True))
  b, t, d = 2, 10, cfg.d_model
  x = jnp.asarray(rng.standard_normal((b, t, d)), jnp.float32)
  _, segment_ids, positions = random_packed_batch(rng, b, t, vocab=10)
  module = GroupedQueryAttention(cfg)
  params = module.init(jax.random.PRNGKey(0), x, segment_ids, positions)["params"]
  # Perturb every parameter (biases start at zero) so each one matters.
  params = jax.tree.map(
      lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(1), p.shape), nn.meta.unbox(params)
  )
  got = module.apply({"params": params}, x, segment_ids, positions)

  p = params
  q = jnp.einsum("btd,dnh->btnh", x, p["query"]["kernel"]) + p["query"]["bias"]
  k = jnp.einsum("btd,dnh->btnh", x, p["key"]["kernel"]) + p["key"]["bias"]
  v = jnp.einsum("btd,dnh->btnh", x, p["value"]["kernel"]) + p["value"]["bias"]
  q, k = apply_rope(q, positions, cfg.rope.base), apply_rope(k, positions, cfg.rope.base)
  attn = naive_multihead(*(np.asarray(a) for a in (q, k, v)), segment_ids)
  want = np.einsum("btnh,nhd->btd", attn, p["out"]["kernel"])
  np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("num_kv_heads", [1, 2, 4])
def test_attention_is_causal(rng, num_kv_heads):
  cfg = ml_collections.FrozenConfigDict(tiny_model_config(num_kv_heads=num_kv_heads))
  b, t, cut = 2, 16, 9
  x = rng.standard_normal((b, t, cfg.d_model)).astype(np.float32)
  segment_ids = np.ones((b, t), np.int32)
  positions = np.tile(np.arange(t, dtype=np.int32), (b, 1))
  module = GroupedQueryAttention(cfg)
  params = module.init(jax.random.PRNGKey(0), x, segment_ids, positions)
  x2 = x.copy()
  x2[:, cut:] = rng.standard_normal(x2[:, cut:].shape)
  y1 = module.apply(params, x, segment_ids, positions)
  y2 = module.apply(params, x2, segment_ids, positions)
  np.testing.assert_allclose(y1[:, :cut], y2[:, :cut], atol=ATOL)
  assert not np.allclose(y1[:, cut:], y2[:, cut:], atol=1e-3)


def test_rope_is_relative(rng):
  """q.k after RoPE depends only on the position difference."""
  q = jnp.asarray(rng.standard_normal((1, 1, 1, 16)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((1, 1, 1, 16)), jnp.float32)
  dot = lambda i, j: float(
      jnp.sum(apply_rope(q, jnp.array([[i]]), 1e4) * apply_rope(k, jnp.array([[j]]), 1e4))
  )
  assert dot(3, 1) == pytest.approx(dot(12, 10), abs=1e-4)
  assert dot(3, 1) != pytest.approx(dot(3, 2), abs=1e-3)
