"""A frozen base kernel stored as int8 with one float scale per output channel."""

import jax
import jax.numpy as jnp


def quantize(kernel: jax.Array, contract_axes: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  """Symmetric int8 codes and scales (max |w| / 127 over the input dims, kept as size-1 dims)."""
  amax = jnp.max(jnp.abs(kernel.astype(jnp.float32)), axis=contract_axes, keepdims=True)
  scale = jnp.where(amax > 0, amax / 127.0, 1.0)
  q = jnp.clip(jnp.round(kernel / scale), -127, 127).astype(jnp.int8)
  return q, scale.astype(kernel.dtype)


def dequantize(q: jax.Array, scale: jax.Array) -> jax.Array:
  return q.astype(scale.dtype) * scale
