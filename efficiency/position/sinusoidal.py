"""Fixed sinusoidal position embeddings added at the input (Vaswani et al. 2017)."""

import flax.linen as nn
import jax.numpy as jnp

from efficiency.position.base import PositionEncoding


def sinusoid_table(positions_BT: jnp.ndarray, d: int, base: float = 10_000.0) -> jnp.ndarray:
  """[B, T, d]: sin(p / base^(2i/d)) in the first half, cos in the second."""
  inv_freq_F = base ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)
  angles_BTF = positions_BT.astype(jnp.float32)[..., None] * inv_freq_F
  return jnp.concatenate([jnp.sin(angles_BTF), jnp.cos(angles_BTF)], axis=-1)[..., :d]


class SinusoidalEmbedding(nn.Module):
  """x + sinusoid(position)."""

  @nn.compact
  def __call__(self, x_BTD: jnp.ndarray, positions_BT: jnp.ndarray) -> jnp.ndarray:
    return x_BTD + sinusoid_table(positions_BT, x_BTD.shape[-1]).astype(x_BTD.dtype)


class Sinusoidal(PositionEncoding):
  """Adds fixed sinusoids of the in-document position to the token embeddings."""

  def input_embedding(self) -> nn.Module:
    return SinusoidalEmbedding(name="position_embedding")
