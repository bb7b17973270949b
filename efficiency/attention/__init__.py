"""Registry of attention variants, keyed by the name `model.attention` uses.

Each variant is an `efficiency.attention.base.Attention` (the contract: project, attend,
attend_cached, out; FLOP counts and the KV-cache spec). Adding a variant is one file with an
`Attention` subclass and one line here.
"""

import dataclasses

import ml_collections

from efficiency.attention.base import Attention
from efficiency.attention.cache import CacheEntry
from efficiency.attention.gqa import GroupedQueryAttention
from efficiency.attention.kernels import choose
from efficiency.attention.kernels.case import AttentionCase
from efficiency.attention.mla import MultiHeadLatentAttention
from efficiency.attention.nsa import NativeSparseAttention
from efficiency.attention.sliding import SlidingWindowAttention
from efficiency.errors import ConfigError
from efficiency.quant.einsum import quantizes_attention
from efficiency.sharding.target import current_platform

ATTENTION: dict[str, type[Attention]] = {
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


def get_attention(name: str) -> type[Attention]:
  """Returns the attention class registered under `name`."""
  if name not in ATTENTION:
    raise ConfigError(f"model.attention={name!r} is unknown; valid choices: {sorted(ATTENTION)}")
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


def attention_impl(config: ml_collections.ConfigDict, platform: str | None = None) -> str:
  """The implementation `model.attention_impl` runs for the training attention of `config` on
  `platform` (default: the one being traced for; what `auto` picked); a named one that cannot
  run it is a ConfigError."""
  name = config.model.get("attention_impl", "auto")
  return choose(name, training_case(config), platform or current_platform())


def training_case(config: ml_collections.ConfigDict) -> AttentionCase:
  """The kernel case of `config`'s training attention, as its modules will ask it."""
  m = config.model
  case = get_attention(m.attention).attention_case(m, config.seq_len)
  if quantizes_attention(config.get("quant")):
    case = dataclasses.replace(case, quantized=m.attention != "nsa")  # NSA's window: float
  if m.attention != "mla":
    case = dataclasses.replace(case, num_kv_heads=resolve_kv_heads(m))
  return case
