"""Learned absolute position embeddings added at the input (GPT-2 style)."""

import flax.linen as nn
import jax.numpy as jnp

from efficiency.position.base import PositionEncoding


class LearnedEmbedding(nn.Module):
  """x + table[position]; positions past `max_positions - 1` share the last row."""

  max_positions: int
  init_std: float

  @nn.compact
  def __call__(self, x_BTD: jnp.ndarray, positions_BT: jnp.ndarray) -> jnp.ndarray:
    table_PD = self.param(
        "embedding",
        nn.with_logical_partitioning(nn.initializers.normal(self.init_std), (None, "embed")),
        (self.max_positions, x_BTD.shape[-1]),
        jnp.float32,
    )
    index_BT = jnp.minimum(positions_BT, self.max_positions - 1)
    return x_BTD + jnp.take(table_PD, index_BT, axis=0).astype(x_BTD.dtype)


class Learned(PositionEncoding):
  """A learned [model.learned.max_positions, d_model] table indexed by in-document position."""

  def input_embedding(self) -> nn.Module:
    cfg = self.config
    return LearnedEmbedding(cfg.learned.max_positions, cfg.init_std, name="position_embedding")
