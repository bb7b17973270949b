"""Fixed sinusoidal position embeddings added at the input (Vaswani et al. 2017)."""

import math

import flax.linen as nn
import jax.numpy as jnp

from efficiency.position.base import PositionEncoding


def sinusoid_table(positions_BT: jnp.ndarray, d: int, base: float = 10_000.0) -> jnp.ndarray:
  """[B, T, d]: sin(p / base^(2i/d)) in the first half, cos in the second."""
  inv_freq_F = base ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)
  angles_BTF = positions_BT.astype(jnp.float32)[..., None] * inv_freq_F
  return jnp.concatenate([jnp.sin(angles_BTF), jnp.cos(angles_BTF)], axis=-1)[..., :d]


class SinusoidalEmbedding(nn.Module):
  """x + scale * sinusoid(position)."""

  scale: float = 1.0

  @nn.compact
  def __call__(self, x_BTD: jnp.ndarray, positions_BT: jnp.ndarray) -> jnp.ndarray:
    table_BTD = sinusoid_table(positions_BT, x_BTD.shape[-1]) * self.scale
    return x_BTD + table_BTD.astype(x_BTD.dtype)


class Sinusoidal(PositionEncoding):
  """Adds fixed sinusoids of the in-document position to the token embeddings.

  The sinusoids are scaled to a quarter of the token embeddings' initial RMS (model.init_std; a
  sinusoid's RMS is 1/sqrt(2)). Unscaled, their norm is ~35x the embeddings' at d_model 256 and
  training stalls: default config, 150 steps, eval loss 6.41 unscaled, 5.47 at the embeddings'
  RMS, 5.27 at a quarter of it (BENCHMARKS.md, attention variants and position encodings).
  """

  def input_embedding(self) -> nn.Module:
    scale = 0.25 * math.sqrt(2) * self.config.init_std
    return SinusoidalEmbedding(scale=scale, name="position_embedding")
