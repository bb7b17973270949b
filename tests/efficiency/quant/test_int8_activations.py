"""int8 activations against integer kernel codes (efficiency.quant.int8_activations, W4A8):
which einsums qualify, and the product against a plain numpy reference, with its compiled form
reading the codes as int8 (no float copy of the kernel)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficiency.backends import cpu
from efficiency.quant import einsum, int8_activations
from tests.efficiency.quant.int8_reference import int8_product_reference

N_HEADS, HEAD, D = 4, 16, 32  # the attention output projection "tnh,nhd->td": K = 64, M = 32


@pytest.mark.parametrize("spec,fits", [
    ("td,dnh->tnh", True), ("tnh,nhd->td", True), ("bmkf,fh->bmkh", True), ("td,df->tf", True),
    ("becd,edf->becf", False),  # MoE experts: the kernel's e is not contracted
    ("tnh,hnd->td", False),  # contracted in another order than the input's
    ("td,vd->tv", False),  # the contracted axis is not the kernel's leading one
])
def test_which_einsums_fit(spec, fits):
  assert int8_activations.fits(spec) == fits


@pytest.mark.parametrize("rows,groups", [(1, 1), (5, 1), (5, 4)])
def test_product_equals_the_plain_reference(rows, groups):
  """Rows of very different ranges and a zero row, per-channel and per-group scales; one row
  runs as two on CPU. The compiled product is an s8 x s8 dot summed in s32 and holds no float
  [K, M] kernel."""
  rng = np.random.default_rng(0)
  k, m = N_HEADS * HEAD, D
  codes_KM = jnp.asarray(rng.integers(-7, 8, size=(k, m)), jnp.int8)
  scale_GM = jnp.asarray(rng.uniform(0.01, 0.1, size=(groups, m)), jnp.float32)
  x_NNH = rng.normal(size=(rows, N_HEADS, HEAD)).astype(np.float32)
  x_NNH *= np.array([3.0, 0.1, 1.0, 0.01, 0.5])[:rows, None, None]
  if rows > 1:
    x_NNH[1] = 0.0
  int_einsum = cpu.two_rows_on_cpu(einsum.int32_einsum)  # as Projection runs it
  fn = jax.jit(lambda x, c, s: int8_activations.product(
      "tnh,nhd->td", x, c, s, (N_HEADS, HEAD, D), jnp.float32, int_einsum))
  compiled = fn.lower(x_NNH, codes_KM, scale_GM).compile()
  got = np.asarray(compiled(x_NNH, codes_KM, scale_GM))
  want = int8_product_reference(x_NNH.reshape(rows, k), np.asarray(codes_KM),
                                np.asarray(scale_GM))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  w_KM = np.asarray(codes_KM, np.float64) * np.repeat(np.asarray(scale_GM), k // groups, 0)
  assert np.abs(got - x_NNH.reshape(rows, k) @ w_KM).max() > 1e-4  # activations quantized
  hlo = compiled.as_text()
  out = rf"\[{max(rows, 2)},{m}\]" if groups == 1 else r"\[[\d,]+\]"  # XLA orders [G, M, N]
  assert re.search(rf"= s32{out}\S* (?:dot|fusion)\(", hlo), hlo  # int32 sums
  assert re.search(rf"= s8\[{max(rows, 2)},", hlo), hlo  # of int8 activations
  assert not re.search(rf"f32\[{k},{m}\]", hlo), hlo  # no float copy of the kernel
