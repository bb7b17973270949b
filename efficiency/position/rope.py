"""Rotary position embedding (RoPE), rotate-half convention as in Llama and Qwen."""

import jax.numpy as jnp

from efficiency.position.base import PositionEncoding


def apply_rope(x_BTNH: jnp.ndarray, positions_BT: jnp.ndarray, base: float) -> jnp.ndarray:
  """Rotates pairs (x[i], x[i + H/2]) by angle position * base^(-2i/H)."""
  h = x_BTNH.shape[-1]
  inv_freq_F = base ** (-jnp.arange(0, h, 2, dtype=jnp.float32) / h)
  angles_BTF = positions_BT.astype(jnp.float32)[..., None] * inv_freq_F
  sin_BT1F = jnp.sin(angles_BTF)[:, :, None, :]
  cos_BT1F = jnp.cos(angles_BTF)[:, :, None, :]
  x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos_BT1F - x2 * sin_BT1F, x2 * cos_BT1F + x1 * sin_BT1F], axis=-1)
  return out.astype(x_BTNH.dtype)


class RoPE(PositionEncoding):
  """Rotates queries and keys; base from `model.rope.base`."""

  def rotate(self, x_BTNH: jnp.ndarray, positions_BT: jnp.ndarray) -> jnp.ndarray:
    return apply_rope(x_BTNH, positions_BT, self.config.rope.base)
