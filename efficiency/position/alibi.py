"""ALiBi (Press et al. 2022): a head-specific linear penalty on the query-key distance."""

import functools
from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp

from efficiency.position.base import PositionEncoding


def alibi_slopes(num_heads: int) -> jnp.ndarray:
  """Geometric slopes 2^(-8 i / n) for i = 1..n, with the paper's interleave when n is not a
  power of two (the slopes of the next lower power, then every other one of twice that)."""

  def power_of_two(n: int) -> list[float]:
    return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

  lower = 2 ** (num_heads.bit_length() - 1)
  slopes = power_of_two(lower)
  if lower < num_heads:
    slopes += power_of_two(2 * lower)[0::2][: num_heads - lower]
  return jnp.asarray(slopes, jnp.float32)


def alibi_bias(
    params: tuple, q_positions: jnp.ndarray, k_positions: jnp.ndarray, num_heads: int
) -> jnp.ndarray:
  """bias[..., n, t, s] = -slope_n * (q_position_t - k_position_s); `params` is empty."""
  del params
  distance = q_positions[..., :, None] - k_positions[..., None, :]
  slopes_N11 = alibi_slopes(num_heads)[:, None, None]
  return -slopes_N11 * distance[..., None, :, :].astype(jnp.float32)


class AlibiBias(nn.Module):
  """bias[..., n, t, s] = -slope_n * (q_position_t - k_position_s)."""

  num_heads: int

  KIND = "fixed"

  def __call__(self, q_positions: jnp.ndarray, k_positions: jnp.ndarray) -> jnp.ndarray:
    return alibi_bias((), q_positions, k_positions, self.num_heads)

  def as_function(self) -> tuple[tuple, Callable]:
    """((), fn) with fn(params, q_positions, k_positions) the bias (no parameters)."""
    return (), functools.partial(alibi_bias, num_heads=self.num_heads)


class Alibi(PositionEncoding):
  """No embedding or rotation; a fixed distance penalty per head on the scores."""

  def score_bias(self) -> nn.Module:
    return AlibiBias(self.config.num_heads, name="position_bias")
