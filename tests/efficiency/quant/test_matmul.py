"""Quantized matmuls against a float reference, and int4 packing."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs.default import get_config
from efficiency.model.layers import Projection
from efficiency.quant import pack

# Relative Frobenius error of x @ W with both operands quantized per channel, for Gaussian
# inputs: about 1 / (sqrt(3) * levels) per operand times sqrt(2); bounds are 2-3x that.
BOUNDS = {"int8": 0.02, "int8_fwd": 0.02, "int4": 0.35, "fp8": 0.08}


def _quant(mode: str) -> ml_collections.FrozenConfigDict:
  q = get_config().quant
  q.mode = mode
  return ml_collections.FrozenConfigDict(q)


@pytest.mark.parametrize("mode", sorted(BOUNDS))
def test_projection_error_within_bit_width_bound(mode):
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 128))
  proj = lambda quant: Projection(
      "btd,dnh->btnh", (128, 4, 32), ("embed", "heads", "head_dim"), init_std=1.0, quant=quant
  )
  params = proj(None).init(jax.random.PRNGKey(1), x)
  ref = proj(None).apply(params, x)
  out = proj(_quant(mode)).apply(params, x)
  err = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
  assert 1e-5 < err < BOUNDS[mode], err  # quantized (not float), and within the bound
  if mode == "int8":
    assert err < BOUNDS["int4"] / 10  # 4 fewer bits: far coarser


def test_int4_pack_unpack_round_trip():
  q = np.random.default_rng(0).integers(-8, 8, size=(64, 10)).astype(np.int8)
  packed = pack.pack_int4(q)
  assert packed.dtype == jnp.uint8 and packed.shape == (32, 10)  # two values per byte
  np.testing.assert_array_equal(pack.unpack_int4(packed), q)


@pytest.mark.parametrize("group_size", [0, 16])
def test_int4_quantize_error_at_most_half_a_step(group_size):
  spec, shape = "becf,efd->becd", (3, 64, 5)  # contracted f is not the leading axis
  w = jax.random.normal(jax.random.PRNGKey(0), shape)
  packed, scale = pack.quantize_int4(w, spec, group_size)
  assert packed.shape == (32, 15) and scale.shape == (64 // (group_size or 64), 15)
  back = pack.dequantize_int4(packed, scale, spec, shape, jnp.float32)
  # Per column and group, |w - back| <= scale / 2 (round to nearest, absmax never clips).
  w_GRM = jnp.transpose(w, (1, 0, 2)).reshape(scale.shape[0], -1, 15)
  back_GRM = jnp.transpose(back, (1, 0, 2)).reshape(scale.shape[0], -1, 15)
  assert bool(jnp.all(jnp.abs(w_GRM - back_GRM) <= scale[:, None] / 2 + 1e-6))
  if group_size:  # smaller groups, smaller scales
    _, per_channel = pack.quantize_int4(w, spec, 0)
    assert float(scale.mean()) < float(per_channel.mean())


def test_int4_group_size_must_divide():
  with pytest.raises(ValueError, match="group_size=24"):
    pack.quantize_int4(jnp.ones((64, 8)), "btd,df->btf", 24)


def test_attention_products_float_by_default_quantized_when_asked():
  from efficiency.attention.dot_product import grouped_attention

  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  q = jax.random.normal(keys[0], (2, 16, 4, 32))
  k, v = (jax.random.normal(key, (2, 16, 2, 32)) for key in keys[1:])
  mask = jnp.tril(jnp.ones((16, 16), bool))[None, None].repeat(2, 0)
  ref = grouped_attention(q, k, v, mask)
  q8 = get_config().quant
  q8.mode = "int8"
  np.testing.assert_array_equal(grouped_attention(q, k, v, mask, quant=q8), ref)
  q8.attention = True
  out = grouped_attention(q, k, v, mask, quant=q8)
  err = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
  assert 1e-5 < err < BOUNDS["int8"], err
  grad = jax.grad(lambda q: grouped_attention(q, k, v, mask, quant=q8).sum())(q)
  assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).max()) > 0
