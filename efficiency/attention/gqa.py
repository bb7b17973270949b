"""Grouped-query attention: MHA (num_kv_heads = num_heads), MQA (1) and GQA (a divisor)."""

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from efficiency.attention.cache import CacheEntry, cached_attention, write
from efficiency.attention.dot_product import grouped_attention
from efficiency.attention.masks import causal_segment_mask
from efficiency.model.layers import Projection
from efficiency.position import get_position


def head_dim(cfg: ml_collections.ConfigDict) -> int:
  """`model.head_dim`, or d_model // num_heads when it is -1."""
  return cfg.head_dim if cfg.head_dim > 0 else cfg.d_model // cfg.num_heads


def projection_kwargs(cfg: ml_collections.ConfigDict, use_bias: bool = False) -> dict:
  """Init, dtypes, bias flag and quantization shared by every attention projection."""
  return dict(
      init_std=cfg.init_std,
      dtype=jnp.dtype(cfg.dtype),
      param_dtype=jnp.dtype(cfg.param_dtype),
      use_bias=use_bias,
      quant=cfg.get("quant"),
  )


def query_projection(cfg: ml_collections.ConfigDict) -> Projection:
  """x_BTD -> q_BTNH, with the QKV bias if configured; called inside a parent's compact method."""
  return Projection(
      "btd,dnh->btnh", (cfg.d_model, cfg.num_heads, head_dim(cfg)), ("embed", "heads", "head_dim"),
      bias_axes=("heads", "head_dim"), name="query", **projection_kwargs(cfg, cfg.qkv_bias),
  )


def kv_projection(cfg: ml_collections.ConfigDict, name: str) -> Projection:
  """x_BTD -> [B, T, K, H] key or value heads, with the QKV bias if configured."""
  return Projection(
      "btd,dkh->btkh", (cfg.d_model, cfg.num_kv_heads, head_dim(cfg)),
      ("embed", "kv_heads", "head_dim"), bias_axes=("kv_heads", "head_dim"), name=name,
      **projection_kwargs(cfg, cfg.qkv_bias),
  )


class GroupedQueryAttention(nn.Module):
  """Multi-head attention whose query heads share `num_kv_heads` key/value heads.

  Subclasses change how the projected heads attend by overriding `attend` (training) and
  `attend_cached` (decoding). With a `cache` ({"key", "value"}: [B, S, K, H]) the new tokens'
  keys and values are written at their positions and the call returns (y_BTD, new cache).
  """

  config: ml_collections.FrozenConfigDict

  @nn.compact
  def __call__(
      self,
      x_BTD: jnp.ndarray,
      segment_ids_BT: jnp.ndarray,
      positions_BT: jnp.ndarray,
      cache: dict[str, jnp.ndarray] | None = None,
  ) -> jnp.ndarray | tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    cfg = self.config
    d, n, h = cfg.d_model, cfg.num_heads, head_dim(cfg)
    q_BTNH = query_projection(cfg)(x_BTD)
    k_BTKH, v_BTKH = kv_projection(cfg, "key")(x_BTD), kv_projection(cfg, "value")(x_BTD)

    position = get_position(cfg.position)(cfg)
    q_BTNH = position.rotate(q_BTNH, positions_BT)
    k_BTKH = position.rotate(k_BTKH, positions_BT)
    q_BTNH = nn.with_logical_constraint(
        q_BTNH, ("activation_batch", "activation_length", "activation_heads", "head_dim")
    )
    if cache is None:
      out_BTNH = self.attend(
          q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, positions_BT, position.score_bias()
      )
    else:
      start_B = positions_BT[:, 0]
      cache = {"key": write(cache["key"], k_BTKH, start_B),
               "value": write(cache["value"], v_BTKH, start_B)}
      out_BTNH = self.attend_cached(
          q_BTNH, cache["key"], cache["value"], positions_BT, position.score_bias()
      )
    y_BTD = Projection(
        "btnh,nhd->btd", (n, h, d), ("heads", "head_dim", "embed"), name="out",
        **projection_kwargs(cfg),
    )(out_BTNH)
    return y_BTD if cache is None else (y_BTD, cache)

  def attend(
      self,
      q_BTNH: jnp.ndarray,
      k_BTKH: jnp.ndarray,
      v_BTKH: jnp.ndarray,
      segment_ids_BT: jnp.ndarray,
      positions_BT: jnp.ndarray,
      bias: nn.Module | None,
  ) -> jnp.ndarray:
    """Full causal attention within each document."""
    mask_B1TS = causal_segment_mask(segment_ids_BT, segment_ids_BT, positions_BT, positions_BT)
    bias_BNTS = None if bias is None else bias(positions_BT, positions_BT)
    return grouped_attention(
        q_BTNH, k_BTKH, v_BTKH, mask_B1TS, bias_BNTS, quant=self.config.get("quant")
    )

  def attend_cached(
      self,
      q_BTNH: jnp.ndarray,
      k_BSKH: jnp.ndarray,
      v_BSKH: jnp.ndarray,
      positions_BT: jnp.ndarray,
      bias: nn.Module | None,
  ) -> jnp.ndarray:
    """New queries attend to every cached key up to their own position."""
    return cached_attention(q_BTNH, k_BSKH, v_BSKH, positions_BT, bias)

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
    """Keys and values of every KV head (RoPE already applied to the keys)."""
    shape = (cfg.num_kv_heads, head_dim(cfg))
    return {"key": CacheEntry(shape, cfg.dtype), "value": CacheEntry(shape, cfg.dtype)}
