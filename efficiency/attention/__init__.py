"""Registry of attention variants, keyed by the name `model.attention` uses.

Each variant is a Linen module class called as `(x_BTD, segment_ids_BT, positions_BT) -> y_BTD`
with static `matmul_params(cfg)` and `score_flops_per_token(cfg, seq_len)` for FLOP counting and
`kv_cache_spec(cfg) -> {name: CacheEntry}` describing its KV cache per token and layer.
"""

import ml_collections

from efficiency.attention.cache import CacheEntry
from efficiency.attention.gqa import GroupedQueryAttention
from efficiency.attention.mla import MultiHeadLatentAttention
from efficiency.attention.nsa import NativeSparseAttention
from efficiency.attention.sliding import SlidingWindowAttention

ATTENTION: dict[str, type] = {
    "mha": GroupedQueryAttention,
    "mqa": GroupedQueryAttention,
    "gqa": GroupedQueryAttention,
    "mla": MultiHeadLatentAttention,
    "nsa": NativeSparseAttention,
    "sliding": SlidingWindowAttention,
}

# Names that fix the number of key/value heads; the rest use model.num_kv_heads as given.
FIXED_KV_HEADS = {
    "mha": lambda cfg: cfg.num_heads,
    "mqa": lambda cfg: 1,
}


def get_attention(name: str) -> type:
  """Returns the attention class registered under `name`."""
  if name not in ATTENTION:
    raise ValueError(f"model.attention={name!r} is unknown; valid choices: {sorted(ATTENTION)}")
  return ATTENTION[name]


def resolve_kv_heads(cfg: ml_collections.ConfigDict) -> int:
  """The number of key/value heads the named variant uses."""
  fixed = FIXED_KV_HEADS.get(cfg.attention)
  return fixed(cfg) if fixed else cfg.num_kv_heads


def kv_cache_bytes_per_token(cfg: ml_collections.ConfigDict) -> float:
  """Cache bytes per token of context over all layers, in the compute dtype, counting every
  entry in full (windows not applied: the figure for a context no longer than the window)."""
  spec: dict[str, CacheEntry] = get_attention(cfg.attention).kv_cache_spec(cfg)
  return cfg.num_layers * sum(entry.bytes_per_token() for entry in spec.values())
