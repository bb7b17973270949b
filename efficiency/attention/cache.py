"""What an attention variant stores in its KV cache, per token and per layer.

Each variant's static `kv_cache_spec(cfg)` returns {name: CacheEntry}; a decoder allocates, per
layer, an array [batch, max_len // every, *shape] of `dtype` for each entry (keeping only the last
`window` tokens when the entry has one).
"""

import dataclasses
import math

import jax.numpy as jnp


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

