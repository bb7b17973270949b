"""Sliding-window (local) attention: GQA where each query sees its last `model.sliding.window`
keys."""

import jax.numpy as jnp
import ml_collections

from efficiency.attention.base import Cache, Heads, head_dim
from efficiency.attention.cache import CacheEntry, ring_attention, ring_write
from efficiency.attention.gqa import GroupedQueryAttention
from efficiency.attention.windowed import mean_visible_keys


class SlidingWindowAttention(GroupedQueryAttention):
  """GQA projections; attention over keys i - window < j <= i of the same document (banded in
  the xla implementation, skipped blocks in the chunked one). Decoding keeps the keys and values
  in ring buffers (`efficiency.attention.cache`)."""

  def window(self) -> int:
    return self.config.sliding.window

  def attend_cached(
      self, heads: Heads, segment_ids_BT: jnp.ndarray, positions_BT: jnp.ndarray, cache: Cache
  ) -> tuple[jnp.ndarray, Cache]:
    """Attends over the rings as they were and the call's own keys, then writes the call into
    the rings."""
    out_BTNH = ring_attention(
        heads["query"], cache["key"], cache["value"], heads["key"], heads["value"], positions_BT,
        self.bias, self.window(),
    )
    start_B = positions_BT[:, 0]
    cache = {name: ring_write(cache[name], heads[name], start_B, segment_ids_BT)
             for name in ("key", "value")}
    return out_BTNH, cache

  @staticmethod
  def window_of(cfg: ml_collections.ConfigDict) -> int:
    return cfg.sliding.window

  @staticmethod
  def score_flops_per_token(cfg: ml_collections.ConfigDict, seq_len: int) -> int:
    """Each query scores min(T, w) keys on average at most: 2 matmuls x 2 x 3 x w' x N x H with
    w' = the mean number of visible keys, (T+1)/2 when w >= T, else about w - w^2 / 2T."""
    visible = mean_visible_keys(cfg.sliding.window, seq_len)
    return int(12 * visible * cfg.num_heads * head_dim(cfg))

  @staticmethod
  def kv_cache_spec(cfg: ml_collections.ConfigDict) -> dict[str, CacheEntry]:
    """GQA's keys and values, of which only the last `window` tokens are read (rings)."""
    shape = (cfg.num_kv_heads, head_dim(cfg))
    return {
        name: CacheEntry(shape, cfg.dtype, window=cfg.sliding.window)
        for name in ("key", "value")
    }
