"""The int8 / int4 embedding table (efficiency.quant.table): round trip within half a step per
row, tied logits within the bound the step gives, lookups that dequantize only gathered rows,
and int8-activation logits against a plain reference."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficiency.backends import cpu
from efficiency.model.layers import token_major
from efficiency.quant import einsum, table
from tests.efficiency.quant.int8_reference import int8_logits_reference

V, D = 97, 64
CASES = [(8, 0), (4, 0), (4, 16)]  # (bits, group_size)


def float_table(seed: int = 0) -> jnp.ndarray:
  rng = np.random.default_rng(seed)
  table_VD = rng.normal(0, 0.05, (V, D)).astype(np.float32)
  table_VD[3] *= 20  # rows of very different ranges: one scale per row must follow each
  table_VD[5] = 0  # an all-zero row
  return jnp.asarray(table_VD)


def steps_VD(scale_VG: jnp.ndarray) -> np.ndarray:
  """Each entry's quantization step (its row's or group's scale), [V, D]."""
  return np.repeat(np.asarray(scale_VG), D // scale_VG.shape[1], axis=1)


@pytest.mark.parametrize("bits,group_size", CASES)
def test_round_trip_within_half_a_step_per_row(bits, group_size):
  w_VD = float_table()
  codes, scale_VG = table.quantize_table(w_VD, bits, group_size)
  assert codes.dtype == (jnp.int8 if bits == 8 else jnp.uint8)
  assert codes.shape == (V, D if bits == 8 else D // 2)
  assert scale_VG.shape == (V, 1 if group_size == 0 else D // group_size)
  assert scale_VG.dtype == jnp.float32
  back_VD = np.asarray(table.dequantize(codes, scale_VG, bits, jnp.float32))
  error_VD = np.abs(back_VD - np.asarray(w_VD))
  step_VD = steps_VD(scale_VG)
  assert np.all(error_VD <= step_VD / 2 * (1 + 1e-6))
  top = 127 if bits == 8 else 7
  np.testing.assert_allclose(np.asarray(scale_VG)[3].max(), np.abs(w_VD[3]).max() / top,
                             rtol=1e-6)
  assert np.all(back_VD[5] == 0)
  assert error_VD.max() > 0  # quantized, not a float copy


@pytest.mark.parametrize("bits,group_size", CASES)
def test_tied_logits_within_the_bound_of_the_step(bits, group_size):
  """|x . (w_hat_v - w_v)| <= sum_d |x_d| step_vd / 2: the codes' error bounds the logits'."""
  w_VD = float_table()
  codes, scale_VG = table.quantize_table(w_VD, bits, group_size)
  x_BTD = jax.random.normal(jax.random.key(1), (2, 5, D))
  got_BTV = np.asarray(table.logits(x_BTD, codes, scale_VG, bits, jnp.float32))
  want_BTV = np.asarray(jnp.einsum("btd,vd->btv", x_BTD, w_VD))
  bound_BTV = np.einsum("btd,vd->btv", np.abs(np.asarray(x_BTD)), steps_VD(scale_VG) / 2)
  assert np.all(np.abs(got_BTV - want_BTV) <= bound_BTV * (1 + 1e-5) + 1e-6)
  # The factored (x @ codes^T) * scale is x @ (dequantized table)^T.
  fake_VD = table.dequantize(codes, scale_VG, bits, jnp.float32)
  np.testing.assert_allclose(got_BTV, np.asarray(x_BTD @ fake_VD.T), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bits,group_size", CASES)
def test_lookup_dequantizes_only_the_gathered_rows(bits, group_size):
  codes, scale_VG = table.quantize_table(float_table(), bits, group_size)
  tokens_BT = jnp.array([[3, 5, 0], [96, 3, 1]], jnp.int32)
  got = table.lookup(codes, scale_VG, tokens_BT, bits, jnp.float32)
  want = table.dequantize(codes, scale_VG, bits, jnp.float32)[tokens_BT]
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  jaxpr = jax.make_jaxpr(
      lambda c, s, t: table.lookup(c, s, t, bits, jnp.float32))(codes, scale_VG, tokens_BT)
  floats = [v.aval.shape for e in jaxpr.jaxpr.eqns for v in e.outvars
            if jnp.issubdtype(v.aval.dtype, jnp.floating)]
  assert floats and all(np.prod(s) <= tokens_BT.size * D for s in floats), floats


@pytest.mark.parametrize("rows", [1, 6])
def test_int8_activation_logits_equal_the_plain_reference(rows):
  """An int8 table's logits with int8 activations (a model served int8) against numpy: rows of
  different ranges, a zero row, and one row (run as two on CPU); the compiled product reads
  int8 codes (an s8 dot summed in s32) and makes no float copy of the table."""
  codes, scale_V1 = table.quantize_table(float_table(), 8)
  x_1ND = jax.random.normal(jax.random.key(2), (1, rows, D)) * jnp.array([3.0] + [0.1] * 5)[
      :rows, None]
  if rows > 1:
    x_1ND = x_1ND.at[0, 1].set(0.0)
  int_einsum = token_major(cpu.two_rows_on_cpu(einsum.int32_einsum))  # as Embed.attend
  fn = jax.jit(lambda x, c, s: table.logits(x, c, s, 8, jnp.float32, int_einsum=int_einsum))
  compiled = fn.lower(x_1ND, codes, scale_V1).compile()
  got = np.asarray(compiled(x_1ND, codes, scale_V1))[0]
  want = int8_logits_reference(np.asarray(x_1ND)[0], np.asarray(codes), np.asarray(scale_V1))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  weight_only = np.asarray(table.logits(x_1ND, codes, scale_V1, 8, jnp.float32))[0]
  assert np.abs(got - weight_only).max() > 1e-4  # the activations are quantized
  hlo = compiled.as_text()
  product = re.search(rf"= s32\[(\d+),{V}\]\S* (?:dot|fusion)\(", hlo)  # int32 sums
  assert product and int(product.group(1)) == max(rows, 2), hlo
  assert re.search(rf"= s8\[{max(rows, 2)},{D}\]", hlo), hlo  # of int8 activations
  assert not re.search(rf"f32\[{V},{D}\]", hlo), hlo  # no float copy of the table
