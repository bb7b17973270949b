"""T5-style relative position bias: a learned scalar per head and log-spaced distance bucket."""

import functools
from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp

from efficiency.position.base import PositionEncoding


def causal_bucket(distance: jnp.ndarray, num_buckets: int, max_distance: int) -> jnp.ndarray:
  """T5's unidirectional bucketing of distance = q_position - k_position (>= 0 when causal).

  Distances below num_buckets / 2 get their own bucket; larger ones share log-spaced buckets up
  to max_distance, beyond which everything falls in the last bucket. Negative distances
  (future keys, masked anyway) map to bucket 0.
  """
  distance = jnp.maximum(distance, 0)
  exact = num_buckets // 2
  log_ratio = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / exact) / jnp.log(
      max_distance / exact
  )
  large = exact + (log_ratio * (num_buckets - exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return jnp.where(distance < exact, distance, large)


def relative_bias(
    table_RN: jnp.ndarray,
    q_positions: jnp.ndarray,
    k_positions: jnp.ndarray,
    num_buckets: int,
    max_distance: int,
) -> jnp.ndarray:
  """bias[..., n, t, s] = table[bucket(q_position_t - k_position_s), n]."""
  distance = q_positions[..., :, None] - k_positions[..., None, :]
  bias_TSN = jnp.take(table_RN, causal_bucket(distance, num_buckets, max_distance), 0)
  return jnp.moveaxis(bias_TSN, -1, -3)


class RelativeBias(nn.Module):
  """bias[..., n, t, s] = table[bucket(q_position_t - k_position_s), n], table learned."""

  num_heads: int
  num_buckets: int
  max_distance: int
  init_std: float

  KIND = "learned"

  def setup(self):
    self.table_RN = self.param(
        "embedding",
        nn.with_logical_partitioning(nn.initializers.normal(self.init_std), (None, "heads")),
        (self.num_buckets, self.num_heads),
        jnp.float32,
    )

  def __call__(self, q_positions: jnp.ndarray, k_positions: jnp.ndarray) -> jnp.ndarray:
    return relative_bias(self.table_RN, q_positions, k_positions, *self._sizes())

  def as_function(self) -> tuple[jnp.ndarray, Callable]:
    """(table, fn) with fn(table, q_positions, k_positions) the bias: for kernels that need the
    bias as a pure function of its parameter."""
    num_buckets, max_distance = self._sizes()
    return self.table_RN, functools.partial(
        relative_bias, num_buckets=num_buckets, max_distance=max_distance
    )

  def _sizes(self) -> tuple[int, int]:
    return self.num_buckets, self.max_distance


class Relative(PositionEncoding):
  """Learned bucketed bias per layer; buckets from `model.relative.buckets` and
  `model.relative.max_distance`."""

  def score_bias(self) -> nn.Module:
    cfg = self.config
    return RelativeBias(
        cfg.num_heads, cfg.relative.buckets, cfg.relative.max_distance, cfg.init_std,
        name="position_bias",
    )
