"""Products of int8 activations with a kernel's integer codes (W4A8: packed int4 kernels served
with `quant.int4_activations=int8`).

The kernel is its matrix view [K, M] (efficiency.quant.pack): int8 values of its codes (int4
codes in [-7, 7] fit int8 as they are) and float32 scales [G, M], one per column and group of
K / G rows. The input's contracted axes flatten into K; each input row (every other axis) becomes
int8 codes with its own scale s = max |x| / 127 over K. The product sums int8 x int8 in int32 and
scales the sums: y = (q @ codes) * s * scale when G is 1; with groups, each group's int32 sums
take their own scales before the sum over groups. No float copy of the kernel is made, which is
what makes a served int4 model decode at int8's speed on CPU (BENCHMARKS.md, Decoding).

The einsum must contract the input's trailing axes against the kernel's leading ones, in one
order, with the output the input's other axes followed by the kernel's (`fits`): every dense
projection of the model does; the experts of a MoE layer (a kernel axis shared with the input)
do not and stay weight-only.
"""

import math
from collections.abc import Callable

import jax.numpy as jnp

from efficiency.quant.pack import contract_axes
from efficiency.quant.table import int8_rows

Einsum = Callable[[str, jnp.ndarray, jnp.ndarray], jnp.ndarray]


def fits(spec: str) -> bool:
  """Whether the einsum `spec` ("x,kernel->y") is a product of the input's trailing axes with
  the kernel's leading ones, giving the input's other axes then the kernel's."""
  lhs, rest = spec.split(",")
  rhs, out = rest.split("->")
  n = len(contract_axes(spec))
  lead = lhs[: len(lhs) - n]
  return (contract_axes(spec) == tuple(range(n)) and n > 0 and lhs.endswith(rhs[:n])
          and not set(lead) & set(rhs) and out == lead + rhs[n:])


def product(
    spec: str, x: jnp.ndarray, codes_KM: jnp.ndarray, scale_GM: jnp.ndarray,
    kernel_shape: tuple[int, ...], dtype: jnp.dtype, int_einsum: Einsum,
) -> jnp.ndarray:
  """einsum(spec, x, kernel) for the kernel of `kernel_shape` given as int8 codes [K, M] and
  scales [G, M], on int8 activations; `int_einsum` multiplies int8 operands into int32 (over a
  leading row axis "t", so `two_rows_on_cpu` applies)."""
  n = len(contract_axes(spec))
  k, m = codes_KM.shape
  g = scale_GM.shape[0]
  lead = x.shape[: x.ndim - n]
  q_NK, s_N1 = int8_rows(x.reshape(math.prod(lead), k))
  if g == 1:
    y_NM = int_einsum("tk,km->tm", q_NK, codes_KM).astype(jnp.float32) * scale_GM[0]
  else:
    q_NGR = q_NK.reshape(-1, g, k // g)
    y_NGM = int_einsum("tgr,grm->tgm", q_NGR, codes_KM.reshape(g, k // g, m))
    y_NM = jnp.sum(y_NGM.astype(jnp.float32) * scale_GM, axis=1)
  return (y_NM * s_N1).reshape(*lead, *kernel_shape[n:]).astype(dtype)
