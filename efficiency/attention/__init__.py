"""Registry of attention variants, keyed by the name `model.attention` uses.

Each variant is a Linen module class called as `(x_BTD, segment_ids_BT, positions_BT) -> y_BTD`
with static `matmul_params(cfg)` and `score_flops_per_token(cfg, seq_len)` for FLOP counting.
"""

import ml_collections

from efficiency.attention.gqa import GroupedQueryAttention

ATTENTION: dict[str, type] = {
    "mha": GroupedQueryAttention,
    "mqa": GroupedQueryAttention,
    "gqa": GroupedQueryAttention,
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
