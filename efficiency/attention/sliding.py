"""Sliding-window (local) attention: GQA where each query sees its last `model.window` keys."""

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from efficiency.attention.cache import CacheEntry, cached_attention
from efficiency.attention.gqa import GroupedQueryAttention, head_dim
from efficiency.attention.windowed import windowed_attention


class SlidingWindowAttention(GroupedQueryAttention):
  """GQA projections; banded attention over keys i - window < j <= i of the same document."""

  def attend(
      self,
      q_BTNH: jnp.ndarray,
      k_BTKH: jnp.ndarray,
      v_BTKH: jnp.ndarray,
      segment_ids_BT: jnp.ndarray,
      positions_BT: jnp.ndarray,
      bias: nn.Module | None,
  ) -> jnp.ndarray:
    return windowed_attention(
        q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, positions_BT, self.config.window, bias
    )

  def attend_cached(
      self,
      q_BTNH: jnp.ndarray,
      k_BSKH: jnp.ndarray,
      v_BSKH: jnp.ndarray,
      positions_BT: jnp.ndarray,
      bias: nn.Module | None,
  ) -> jnp.ndarray:
    """New queries attend to the cached keys of their last `window` positions."""
    return cached_attention(q_BTNH, k_BSKH, v_BSKH, positions_BT, bias, self.config.window)

  @staticmethod
  def score_flops_per_token(cfg: ml_collections.ConfigDict, seq_len: int) -> int:
    """Each query scores min(T, w) keys on average at most: 2 matmuls x 2 x 3 x w' x N x H with
    w' = the mean number of visible keys, (T+1)/2 when w >= T, else about w - w^2 / 2T."""
    w = min(cfg.window, seq_len)
    visible = w - (w * (w - 1)) / (2 * seq_len)  # mean over positions of min(i + 1, w)
    return int(12 * visible * cfg.num_heads * head_dim(cfg))

  @staticmethod
  def kv_cache_spec(cfg: ml_collections.ConfigDict) -> dict[str, CacheEntry]:
    """GQA's keys and values, of which only the last `window` tokens are read."""
    shape = (cfg.num_kv_heads, head_dim(cfg))
    return {
        name: CacheEntry(shape, cfg.dtype, window=cfg.window) for name in ("key", "value")
    }
