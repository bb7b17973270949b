"""int4 weight-only storage: symmetric per-channel or per-group scales, two values per byte.

A kernel is viewed as a matrix [K, M]: K the dims its einsum contracts, M the rest (in kernel
order). Groups of `group_size` consecutive rows of K share a scale per column (0: one group of
all K, per-channel). Values are round(w / scale) in [-7, 7]; a byte holds row 2i in its low and
row 2i + 1 in its high nibble, as two's-complement 4-bit numbers.
"""

import math

import jax.numpy as jnp
import numpy as np

INT4_MAX = 7


def contract_axes(spec: str) -> tuple[int, ...]:
  """Kernel axes the einsum `spec` ("x,kernel->y") contracts (absent from the output)."""
  inputs, out = spec.split("->")
  kernel = inputs.split(",")[1]
  return tuple(i for i, c in enumerate(kernel) if c not in out)


def _order(spec: str, ndim: int) -> tuple[int, ...]:
  contract = contract_axes(spec)
  return contract + tuple(i for i in range(ndim) if i not in contract)


def matrix_shape(spec: str, kernel_shape: tuple[int, ...]) -> tuple[int, int]:
  """[K, M] of the kernel's matrix view."""
  k = math.prod(kernel_shape[i] for i in contract_axes(spec))
  return k, math.prod(kernel_shape) // k


def num_groups(k: int, group_size: int) -> int:
  """Scale rows for K contracted values; group_size must divide K (0: per-channel)."""
  if group_size <= 0:
    return 1
  if k % group_size:
    raise ValueError(f"group_size={group_size} does not divide the contracted size {k}")
  return k // group_size


def pack_int4(q_KM: jnp.ndarray) -> jnp.ndarray:
  """int values in [-8, 7], [K, M] with K even -> uint8 [K // 2, M]."""
  u_KM = jnp.asarray(q_KM, jnp.int8).astype(jnp.uint8) & 0xF
  return u_KM[0::2] | (u_KM[1::2] << 4)


def unpack_int4(packed_HM: jnp.ndarray, axis: int = 0) -> jnp.ndarray:
  """uint8 [K // 2, M] -> int8 [K, M], the inverse of pack_int4; with `axis`, the values packed
  along that axis of any array instead (the table's rows: axis -1)."""
  axis = axis % packed_HM.ndim
  low = (packed_HM & 0xF).astype(jnp.int8)
  high = (packed_HM >> 4).astype(jnp.int8)
  shape = list(packed_HM.shape)
  shape[axis] *= 2
  both = jnp.stack([low, high], axis=axis + 1).reshape(shape)
  return jnp.where(both > INT4_MAX, both - 16, both)


def quantize_int4(
    kernel: jnp.ndarray, spec: str, group_size: int
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """A float kernel -> (packed uint8 [K // 2, M], float32 scales [groups, M])."""
  k, m = matrix_shape(spec, kernel.shape)
  if k % 2:
    raise ValueError(f"int4 packing needs an even contracted size, got {k} for {spec!r}")
  g = num_groups(k, group_size)
  w_GRM = jnp.transpose(kernel, _order(spec, kernel.ndim)).reshape(g, k // g, m)
  w_GRM = w_GRM.astype(jnp.float32)
  scale_G1M = jnp.max(jnp.abs(w_GRM), axis=1, keepdims=True) / INT4_MAX
  scale_G1M = jnp.where(scale_G1M == 0, 1.0, scale_G1M)
  q_KM = jnp.clip(jnp.round(w_GRM / scale_G1M), -INT4_MAX, INT4_MAX).reshape(k, m)
  return pack_int4(q_KM), scale_G1M[:, 0]


def dequantize_int4(
    packed_HM: jnp.ndarray, scale_GM: jnp.ndarray, spec: str, kernel_shape: tuple[int, ...],
    dtype: jnp.dtype,
) -> jnp.ndarray:
  """The kernel in `dtype` from its packed values and scales."""
  return dequantize_codes(unpack_int4(packed_HM), scale_GM, spec, kernel_shape, dtype)


def int4_codes(packed_HM: jnp.ndarray) -> jnp.ndarray:
  """uint8 [K // 2, M] -> the values as XLA's 4-bit integer type, jnp.int4 [K, M]."""
  return unpack_int4(packed_HM).astype(jnp.int4)


def dequantize_codes(
    q_KM: jnp.ndarray, scale_GM: jnp.ndarray, spec: str, kernel_shape: tuple[int, ...],
    dtype: jnp.dtype,
) -> jnp.ndarray:
  """The kernel in `dtype` from its integer values [K, M] (int8 or int4) and scales."""
  k, m = q_KM.shape
  g = scale_GM.shape[0]
  w_GRM = q_KM.reshape(g, k // g, m).astype(scale_GM.dtype) * scale_GM[:, None]
  order = _order(spec, len(kernel_shape))
  w = w_GRM.reshape([kernel_shape[i] for i in order]).astype(dtype)
  return jnp.transpose(w, np.argsort(order))
