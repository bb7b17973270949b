"""What an attention variant stores in its KV cache, per token and per layer, and how decoding
reads and writes it.

Each variant's static `kv_cache_spec(cfg)` returns {name: CacheEntry}; a decoder allocates, per
layer, an array [batch, slots, *shape] of `dtype` for each entry (`CacheEntry.slots`), or for a
heads-major entry of shape (K, H) [batch, K, slots, H], and moves a per-row pointer: a cached
call writes its T tokens at positions start_B[b] .. start_B[b] + T - 1.

Heads-major is the layout the score and value products read as they are: they batch over rows
and KV heads, and XLA (on CPU at least) copied a [batch, slots, K, H] cache into [batch, K, ...]
twice per layer and decode step, a fifth of a batch-8 step at 128 slots and more at longer ones.
A heads-major entry may also keep its slots last, [batch, K, H, slots] (`slots_last`): keys are
stored so, since the score product q . k then runs over a [H, slots] matrix per row and head
with slots on the vector lanes, not as a sum along each key's H (BENCHMARKS.md, Decoding).

- Full entries (no `window`) keep one slot per position (one per `every` positions for strided
  entries): `write` stores new entries at slot = position and `cached_attention` masks every
  slot past a query's position (stale entries of rejected drafts or padding), so rolling back
  is moving the pointer.
- Windowed entries are ring buffers of `window + rollback` slots, slot = position mod ring
  length (`ring_write`). `rollback` is a bound the decoder gives when it allocates: the most
  positions at or past a call's first position that earlier calls have already written (stale
  rejected drafts, tokens fed again); 0 when every call starts at the row's pointer. A call's
  queries see the ring as it was before the call (each slot holding the latest position before
  the call's start that maps to it, `ring_positions`) plus the call's own keys
  (`ring_attention`), so one call may write more tokens than the ring holds (a long prompt).
  Of the positions before a call's start s, its queries see only the last window - 1; any other
  position sharing a slot with one of them is at least s + R - window + 1, beyond every position
  written so far (< s + rollback) since R >= window - 1 + rollback. So no slot a query can see
  holds anything but its own position, and after a rollback the visible slots hold exactly what
  a ring fed only the kept tokens holds (one slot to spare). With `rollback=None` windowed
  entries are allocated at full length, where the same ring arithmetic is slot = position.

Padding tokens of a cached call (segment id 0, after the row's real tokens) are not written into
rings, so right-padded prompts of different lengths need no extra slots.
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

  `window` (tokens) marks per-token entries only the most recent tokens of which are ever read:
  decoders keep them in a ring buffer (see the module docstring); None means every token is kept.
  """

  shape: tuple[int, ...]
  dtype: jnp.dtype
  every: int = 1
  window: int | None = None
  heads_major: bool = False  # shape (K, H) stored [B, K, slots, H] (see the module docstring)
  slots_last: bool = False  # heads-major with slots last: [B, K, H, slots]

  def __post_init__(self):
    if self.slots_last and not self.heads_major:
      raise ValueError("CacheEntry: slots_last needs heads_major")

  def array_shape(self, batch: int, slots: int) -> tuple[int, ...]:
    """The entry's array for `batch` rows of `slots` slots."""
    if self.heads_major:
      heads, width = self.shape
      return (batch, heads, width, slots) if self.slots_last else (batch, heads, slots, width)
    return (batch, slots, *self.shape)

  @property
  def slot_axis(self) -> int:
    """The axis of its array that indexes slots."""
    if self.heads_major:
      return 3 if self.slots_last else 2
    return 1

  def bytes_per_token(self) -> float:
    return math.prod(self.shape) * jnp.dtype(self.dtype).itemsize / self.every

  def slots(self, max_len: int, rollback: int | None) -> int:
    """Slots a decoder allocates for `max_len` positions per row: max_len // every, or for a
    windowed entry with a `rollback` bound a ring of at most window + rollback slots."""
    full = max_len // self.every
    if self.window is None or rollback is None:
      return full
    return min(full, self.window + rollback)


def write(cache_BS: jnp.ndarray, new_BT: jnp.ndarray, start_B: jnp.ndarray,
          heads_major: bool = False, slots_last: bool = False) -> jnp.ndarray:
  """Writes each row's new entries [B, T, ...] into its cache row [B, S, ...] at slot start_B[b]
  (a heads-major cache [B, K, S, H], or [B, K, H, S] with `slots_last`, takes new entries
  [B, T, K, H] the same way)."""
  axis = 0  # the slot axis of a row
  if heads_major:
    new_BT = new_BT.transpose((0, 2, 3, 1) if slots_last else (0, 2, 1, 3))  # [B, K, (H, T)]
    axis = 2 if slots_last else 1
  return jax.vmap(lambda c, x, s: jax.lax.dynamic_update_slice_in_dim(c, x, s, axis=axis))(
      cache_BS, new_BT.astype(cache_BS.dtype), start_B
  )


def ring_write(
    ring_BR: jnp.ndarray, new_BT: jnp.ndarray, start_B: jnp.ndarray, segment_ids_BT: jnp.ndarray
) -> jnp.ndarray:
  """Writes each row's real new entries (segment id != 0, a prefix of the row) into its ring
  [B, R, ...] at slot (start_B[b] + t) mod R; of more than R real tokens only the last R."""
  b, t = new_BT.shape[:2]
  r = ring_BR.shape[1]
  real_BT = segment_ids_BT != 0
  count_B1 = real_BT.sum(axis=1, keepdims=True)
  t_1T = jnp.arange(t)[None]
  keep_BT = real_BT & (t_1T >= count_B1 - r)
  slot_BT = jnp.where(keep_BT, (start_B[:, None] + t_1T) % r, r)  # r: out of range, dropped
  return ring_BR.at[jnp.arange(b)[:, None], slot_BT].set(new_BT.astype(ring_BR.dtype), mode="drop")


def ring_positions(start_B: jnp.ndarray, length: int) -> jnp.ndarray:
  """Position held by each slot of a ring of `length` slots before a call at start_B: the latest
  position before start_B[b] that maps to the slot; negative where none does yet. [B, length]."""
  last_B1 = start_B[:, None] - 1
  return last_B1 - (last_B1 - jnp.arange(length, dtype=start_B.dtype)[None]) % length


def window_mask(
    q_positions_BT: jnp.ndarray, k_positions_BS: jnp.ndarray, window: int | None
) -> jnp.ndarray:
  """[B, 1, T, S]: key positions 0 <= k <= q (and q - k < window)."""
  q_BT1, k_B1S = q_positions_BT[:, :, None], k_positions_BS[:, None, :]
  mask_BTS = (k_B1S <= q_BT1) & (k_B1S >= 0)
  if window is not None:
    mask_BTS &= q_BT1 - k_B1S < window
  return mask_BTS[:, None]


def cached_mask(
    q_positions_BT: jnp.ndarray, length: int, window: int | None = None
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Decode mask [B, 1, T, S] and key positions [B, S] for queries at `q_positions_BT` over a
  full cache of `length` slots, slot s holding the token at position s of its row.

  A query sees slots s <= its position (and > position - window): slots past the row's pointer
  hold stale entries of rejected drafts or padding and stay masked until overwritten.
  """
  b = q_positions_BT.shape[0]
  k_positions_BS = jnp.broadcast_to(jnp.arange(length, dtype=q_positions_BT.dtype), (b, length))
  return window_mask(q_positions_BT, k_positions_BS, window), k_positions_BS


def cached_attention(
    q_BTNH: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    q_positions_BT: jnp.ndarray,
    bias: nn.Module | None,
    window: int | None = None,
    scale: float | None = None,
    heads_major: bool = False,
    keys_slots_last: bool = False,
) -> jnp.ndarray:
  """Attention of new queries to a whole full cache (see `cached_mask`) of keys and values
  [B, S, K, H], or [B, K, S, H] when `heads_major` (keys [B, K, H, S] with `keys_slots_last`).
  Returns [B, T, N, V]."""
  mask_B1TS, k_positions_BS = cached_mask(q_positions_BT, v.shape[2 if heads_major else 1],
                                          window)
  bias_BNTS = None if bias is None else bias(q_positions_BT, k_positions_BS)
  return grouped_attention(q_BTNH, k, v, mask_B1TS, bias_BNTS, scale, heads_major=heads_major,
                           keys_slots_last=keys_slots_last)


def ring_attention(
    q_BTNH: jnp.ndarray,
    ring_k_BRKH: jnp.ndarray,
    ring_v_BRKH: jnp.ndarray,
    k_BTKH: jnp.ndarray,
    v_BTKH: jnp.ndarray,
    q_positions_BT: jnp.ndarray,
    bias: nn.Module | None,
    window: int,
    scale: float | None = None,
) -> jnp.ndarray:
  """Windowed attention of a call's queries to the ring as it was before the call and to the
  call's own keys (at the queries' positions, in the ring's dtype as if read back from it), each
  key at its real position (for the mask and the position bias). Returns [B, T, N, V]."""
  ring_positions_BR = ring_positions(q_positions_BT[:, 0], ring_k_BRKH.shape[1])
  k_positions_BS = jnp.concatenate([ring_positions_BR, q_positions_BT], axis=1)
  k_BSKH = jnp.concatenate([ring_k_BRKH, k_BTKH.astype(ring_k_BRKH.dtype)], axis=1)
  v_BSKH = jnp.concatenate([ring_v_BRKH, v_BTKH.astype(ring_v_BRKH.dtype)], axis=1)
  mask_B1TS = window_mask(q_positions_BT, k_positions_BS, window)
  bias_BNTS = None if bias is None else bias(q_positions_BT, k_positions_BS)
  return grouped_attention(q_BTNH, k_BSKH, v_BSKH, mask_B1TS, bias_BNTS, scale)
