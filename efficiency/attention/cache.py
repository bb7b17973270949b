"""What an attention variant stores in its KV cache, per token and per layer.

Each variant's static `kv_cache_spec(cfg)` returns {name: CacheEntry}; a decoder allocates, per
layer, an array [batch, max_len // every, *shape] of `dtype` for each entry (keeping only the last
`window` tokens when the entry has one).

Decoding (`efficiency.serving`) keeps one slot per position of the row (one per `every` positions
for strided entries; windowed entries at full length, the window applied by the mask: a ring
buffer would save that memory) and moves a per-row pointer: `write` stores new entries at the
pointer and `cached_attention` masks everything past it.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from efficiency.attention.dot_product import grouped_attention


@dataclasses.dataclass(frozen=True)
class CacheEntry:
  """One cached tensor: `shape` per stored entry, one entry per `every` tokens of context.

  `window` (tokens) marks entries only the most recent tokens of which are ever read, so a
  decoder may keep a ring buffer of that length; None means every token is kept.
  """

  shape: tuple[int, ...]
  dtype: jnp.dtype
  every: int = 1
  window: int | None = None

  def bytes_per_token(self) -> float:
    return math.prod(self.shape) * jnp.dtype(self.dtype).itemsize / self.every



def write(cache_BS: jnp.ndarray, new_BT: jnp.ndarray, start_B: jnp.ndarray) -> jnp.ndarray:
  """Writes each row's new entries [B, T, ...] into its cache row [B, S, ...] at slot start_B[b]."""
  return jax.vmap(lambda c, x, s: jax.lax.dynamic_update_slice_in_dim(c, x, s, axis=0))(
      cache_BS, new_BT.astype(cache_BS.dtype), start_B
  )


def cached_mask(
    q_positions_BT: jnp.ndarray, length: int, window: int | None = None
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Decode mask [B, 1, T, S] and key positions [B, S] for queries at `q_positions_BT` over a
  cache of `length` slots, slot s holding the token at position s of its row.

  A query sees slots s <= its position (and > position - window): slots past the row's pointer
  hold stale entries of rejected drafts or padding and stay masked until overwritten.
  """
  b = q_positions_BT.shape[0]
  k_positions_BS = jnp.broadcast_to(jnp.arange(length, dtype=q_positions_BT.dtype), (b, length))
  q_BT1, k_B1S = q_positions_BT[:, :, None], k_positions_BS[:, None, :]
  mask_BTS = k_B1S <= q_BT1
  if window is not None:
    mask_BTS &= q_BT1 - k_B1S < window
  return mask_BTS[:, None], k_positions_BS


def cached_attention(
    q_BTNH: jnp.ndarray,
    k_BSKH: jnp.ndarray,
    v_BSKH: jnp.ndarray,
    q_positions_BT: jnp.ndarray,
    bias: nn.Module | None,
    window: int | None = None,
    scale: float | None = None,
) -> jnp.ndarray:
  """Attention of new queries to a whole cache (see `cached_mask`). Returns [B, T, N, V]."""
  mask_B1TS, k_positions_BS = cached_mask(q_positions_BT, k_BSKH.shape[1], window)
  bias_BNTS = None if bias is None else bias(q_positions_BT, k_positions_BS)
  return grouped_attention(q_BTNH, k_BSKH, v_BSKH, mask_B1TS, bias_BNTS, scale)
