"""The contract every attention variant implements.

A variant is a Linen module `(config, quant)` called as

  y_BTD = attention(x_BTD, segment_ids_BT, positions_BT)               # training, prefill-free
  y_BTD, cache = attention(x_BTD, segment_ids_BT, positions_BT, cache)  # decoding from a cache

and built from four steps, which subclasses fill in:

  heads = project(x_BTD, positions_BT)                          # named tensors per token
  out_BTNV = attend(heads, segment_ids_BT, positions_BT)        # attention within documents
  out_BTNV, cache = attend_cached(heads, segment_ids_BT, positions_BT, cache)  # over a KV cache
  y_BTD = out(out_BTNV)                                         # the output projection

`attend_cached` writes the new tokens' entries at their positions (one document per row; segment
id 0 marks padding after a row's real tokens) and attends to every cached entry up to each
query's own position (full entries: slot = position; windowed entries: ring buffers, see
`efficiency.attention.cache`). Static methods give what the rest of the framework counts:
`matmul_params(cfg)` and `score_flops_per_token(cfg, seq_len)` for FLOPs,
`kv_cache_spec(cfg) -> {name: CacheEntry}` for the cache.
"""

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from efficiency.attention import kernels
from efficiency.attention.cache import CacheEntry
from efficiency.attention.kernels.case import AttentionCase
from efficiency.model.layers import Projection
from efficiency.position import get_position
from efficiency.quant.einsum import quantizes_attention
from efficiency.sharding.target import current_platform

Heads = dict[str, jnp.ndarray]
Cache = dict[str, jnp.ndarray]


def head_dim(cfg: ml_collections.ConfigDict) -> int:
  """`model.head_dim`, or d_model // num_heads when it is -1."""
  return cfg.head_dim if cfg.head_dim > 0 else cfg.d_model // cfg.num_heads


def position_bias_kind(cfg: ml_collections.ConfigDict) -> str | None:
  """`KIND` of the position encoding's score bias ("fixed", "learned"), None without one."""
  bias = get_position(cfg.position)(cfg).score_bias()
  return None if bias is None else bias.KIND


class Attention(nn.Module):
  """Base class: `setup` builds the position encoding, its score bias and the output projection;
  subclasses add their projections in `setup` (calling super) and implement the steps above.

  `config` is the model section of the config; `quant` its `quant` section (None: float).
  """

  config: ml_collections.FrozenConfigDict
  quant: ml_collections.FrozenConfigDict | None = None

  def setup(self):
    cfg = self.config
    self.position = get_position(cfg.position)(cfg)
    self.bias = self.position.score_bias()
    self.out = Projection(
        "btnh,nhd->btd", (cfg.num_heads, self.value_dim(cfg), cfg.d_model),
        ("heads", "head_dim", "embed"), name="out", **self.projection_kwargs(),
    )

  def __call__(
      self,
      x_BTD: jnp.ndarray,
      segment_ids_BT: jnp.ndarray,
      positions_BT: jnp.ndarray,
      cache: Cache | None = None,
  ) -> jnp.ndarray | tuple[jnp.ndarray, Cache]:
    heads = self.project(x_BTD, positions_BT)
    if cache is None:
      return self.out(self.attend(heads, segment_ids_BT, positions_BT))
    out_BTNV, cache = self.attend_cached(heads, segment_ids_BT, positions_BT, cache)
    return self.out(out_BTNV), cache

  def projection_kwargs(self, use_bias: bool = False) -> dict:
    """Init, dtypes, bias flag and quantization shared by every attention projection."""
    cfg = self.config
    return dict(
        init_std=cfg.init_std,
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
        use_bias=use_bias,
        quant=self.quant,
    )

  def query_projection(self) -> Projection:
    """x_BTD -> q_BTNH, with the QKV bias if configured (a setup-time helper)."""
    cfg = self.config
    return Projection(
        "btd,dnh->btnh", (cfg.d_model, cfg.num_heads, head_dim(cfg)),
        ("embed", "heads", "head_dim"), bias_axes=("heads", "head_dim"), name="query",
        **self.projection_kwargs(cfg.qkv_bias),
    )

  def kv_projection(self, name: str) -> Projection:
    """x_BTD -> [B, T, K, H] key or value heads, with the QKV bias if configured."""
    cfg = self.config
    return Projection(
        "btd,dkh->btkh", (cfg.d_model, cfg.num_kv_heads, head_dim(cfg)),
        ("embed", "kv_heads", "head_dim"), bias_axes=("kv_heads", "head_dim"), name=name,
        **self.projection_kwargs(cfg.qkv_bias),
    )

  def self_attention(
      self,
      q_BTNH: jnp.ndarray,
      k_BTKH: jnp.ndarray,
      v_BTKV: jnp.ndarray,
      segment_ids_BT: jnp.ndarray,
      positions_BT: jnp.ndarray,
      window: int | None = None,
      scale: float | None = None,
      quantized: bool = True,
  ) -> jnp.ndarray:
    """Causal attention within each packed document (the last `window` keys when set), with the
    position bias, through the implementation `model.attention_impl` picks: [B, T, N, V].
    `quantized=False` keeps the products float whatever `quant.attention` says."""
    quant = self.quant if quantized else None
    kind = None if self.bias is None else self.bias.KIND
    case = AttentionCase.of(q_BTNH, k_BTKH, v_BTKV, window, kind, quantizes_attention(quant))
    name = kernels.choose(self.config.get("attention_impl", "auto"), case, current_platform())
    return kernels.attend(
        name, q_BTNH, k_BTKH, v_BTKV, segment_ids_BT, positions_BT, window=window,
        bias=self.bias, scale=scale, quant=quant,
    )

  def project(self, x_BTD: jnp.ndarray, positions_BT: jnp.ndarray) -> Heads:
    """The input's queries, keys and values (or what the variant keeps instead), positions
    applied."""
    raise NotImplementedError

  def attend(
      self, heads: Heads, segment_ids_BT: jnp.ndarray, positions_BT: jnp.ndarray
  ) -> jnp.ndarray:
    """Causal attention within each packed document: [B, T, N, V]."""
    raise NotImplementedError

  def attend_cached(
      self, heads: Heads, segment_ids_BT: jnp.ndarray, positions_BT: jnp.ndarray, cache: Cache
  ) -> tuple[jnp.ndarray, Cache]:
    """Writes the new tokens into the cache and attends over it: ([B, T, N, V], new cache)."""
    raise NotImplementedError

  @staticmethod
  def value_dim(cfg: ml_collections.ConfigDict) -> int:
    """Per-head width of the attention output (V)."""
    return head_dim(cfg)

  @classmethod
  def attention_case(cls, cfg: ml_collections.ConfigDict, seq_len: int) -> AttentionCase:
    """The case the variant's training attention asks of a kernel (what `auto` decides on):
    query heads sharing `num_kv_heads` key/value heads, the window of `window_of`."""
    return AttentionCase(
        seq_len, cfg.num_heads, cfg.num_kv_heads, head_dim(cfg), cls.value_dim(cfg),
        jnp.dtype(cfg.dtype).name, cls.window_of(cfg), position_bias_kind(cfg), False,
    )

  @staticmethod
  def window_of(cfg: ml_collections.ConfigDict) -> int | None:
    """The keys a query sees in the variant's kernel call; None: all of its past."""
    del cfg
    return None

  @staticmethod
  def matmul_params(cfg: ml_collections.ConfigDict) -> int:
    raise NotImplementedError

  @staticmethod
  def score_flops_per_token(cfg: ml_collections.ConfigDict, seq_len: int) -> int:
    raise NotImplementedError

  @staticmethod
  def kv_cache_spec(cfg: ml_collections.ConfigDict) -> dict[str, CacheEntry]:
    raise NotImplementedError
