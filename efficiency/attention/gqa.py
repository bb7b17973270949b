"""Grouped-query attention: MHA (num_kv_heads = num_heads), MQA (1) and GQA (a divisor)."""

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from efficiency.attention.base import Attention, Cache, Heads, head_dim
from efficiency.attention.cache import CacheEntry, cached_attention, write

# The key cache keeps its slots last ([B, K, H, S]); False: [B, K, S, H] as the values
# (`benchmarks/decode_ab.py --compare key_layout` runs both).
KEYS_SLOTS_LAST = True


class GroupedQueryAttention(Attention):
  """Multi-head attention whose query heads share `num_kv_heads` key/value heads.

  Heads are {"query": [B, T, N, H], "key", "value": [B, T, K, H]} with the position encoding's
  rotation applied; the cache holds every token's key and value, heads-major ({"key": [B, K, H, S]
  with slots last, "value": [B, K, S, H]}; efficiency.attention.cache).
  Subclasses change which keys a query sees through `attend` and `window`.
  """

  def setup(self):
    super().setup()
    self.query = self.query_projection()
    self.key = self.kv_projection("key")
    self.value = self.kv_projection("value")

  def project(self, x_BTD: jnp.ndarray, positions_BT: jnp.ndarray) -> Heads:
    q_BTNH = self.position.rotate(self.query(x_BTD), positions_BT)
    k_BTKH = self.position.rotate(self.key(x_BTD), positions_BT)
    q_BTNH = nn.with_logical_constraint(
        q_BTNH, ("activation_batch", "activation_length", "activation_heads", "head_dim")
    )
    return {"query": q_BTNH, "key": k_BTKH, "value": self.value(x_BTD)}

  def window(self) -> int | None:
    """How many of its latest tokens (itself included) a query sees; None: all."""
    return None

  def attend(
      self, heads: Heads, segment_ids_BT: jnp.ndarray, positions_BT: jnp.ndarray
  ) -> jnp.ndarray:
    """Causal attention within each document over the keys `window` allows."""
    return self.self_attention(
        heads["query"], heads["key"], heads["value"], segment_ids_BT, positions_BT, self.window()
    )

  def attend_cached(
      self, heads: Heads, segment_ids_BT: jnp.ndarray, positions_BT: jnp.ndarray, cache: Cache
  ) -> tuple[jnp.ndarray, Cache]:
    del segment_ids_BT  # full cache: padding lands past the pointer, masked until overwritten
    start_B = positions_BT[:, 0]
    cache = {name: write(cache[name], heads[name], start_B, heads_major=True,
                         slots_last=name == "key" and KEYS_SLOTS_LAST)
             for name in ("key", "value")}
    out_BTNH = cached_attention(
        heads["query"], cache["key"], cache["value"], positions_BT, self.bias, self.window(),
        heads_major=True, keys_slots_last=KEYS_SLOTS_LAST,
    )
    return out_BTNH, cache

  @staticmethod
  def matmul_params(cfg: ml_collections.ConfigDict) -> int:
    """Weights used in matmuls per layer: Q, K, V and output projections."""
    h = head_dim(cfg)
    return cfg.d_model * h * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)

  @staticmethod
  def score_flops_per_token(cfg: ml_collections.ConfigDict, seq_len: int) -> int:
    """Training FLOPs per token per layer for QK^T and PV under a causal mask.

    Full attention costs 2 matmuls x 2 FLOPs x 3 (fwd + bwd) x T x N x H = 12 T N H per token;
    the causal mask halves it to 6 T N H.
    """
    return 6 * seq_len * cfg.num_heads * head_dim(cfg)

  @staticmethod
  def kv_cache_spec(cfg: ml_collections.ConfigDict) -> dict[str, CacheEntry]:
    """Keys and values of every KV head (RoPE already applied to the keys), heads-major; keys
    with their slots last."""
    shape = (cfg.num_kv_heads, head_dim(cfg))
    return {name: CacheEntry(shape, cfg.dtype, heads_major=True,
                             slots_last=name == "key" and KEYS_SLOTS_LAST)
            for name in ("key", "value")}
