"""Grouped-query attention: MHA (num_kv_heads = num_heads), MQA (1) and GQA (a divisor)."""

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from efficiency.attention.dot_product import grouped_attention
from efficiency.attention.masks import causal_segment_mask
from efficiency.model.layers import Projection
from efficiency.position import get_position


def head_dim(cfg: ml_collections.ConfigDict) -> int:
  """`model.head_dim`, or d_model // num_heads when it is -1."""
  return cfg.head_dim if cfg.head_dim > 0 else cfg.d_model // cfg.num_heads


class GroupedQueryAttention(nn.Module):
  """Multi-head attention whose query heads share `num_kv_heads` key/value heads."""

  config: ml_collections.FrozenConfigDict

  @nn.compact
  def __call__(
      self, x_BTD: jnp.ndarray, segment_ids_BT: jnp.ndarray, positions_BT: jnp.ndarray
  ) -> jnp.ndarray:
    cfg = self.config
    d, n, k, h = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, head_dim(cfg)
    kw = dict(
        init_std=cfg.init_std,
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
        use_bias=cfg.qkv_bias,
    )
    q_BTNH = Projection(
        "btd,dnh->btnh", (d, n, h), ("embed", "heads", "head_dim"),
        bias_axes=("heads", "head_dim"), name="query", **kw,
    )(x_BTD)
    kv = lambda name: Projection(
        "btd,dkh->btkh", (d, k, h), ("embed", "kv_heads", "head_dim"),
        bias_axes=("kv_heads", "head_dim"), name=name, **kw,
    )(x_BTD)
    k_BTKH, v_BTKH = kv("key"), kv("value")

    position = get_position(cfg.position)(cfg)
    q_BTNH = position.rotate(q_BTNH, positions_BT)
    k_BTKH = position.rotate(k_BTKH, positions_BT)
    q_BTNH = nn.with_logical_constraint(
        q_BTNH, ("activation_batch", "activation_length", "activation_heads", "head_dim")
    )

    mask_B1TS = causal_segment_mask(segment_ids_BT, segment_ids_BT, positions_BT, positions_BT)
    out_BTNH = grouped_attention(q_BTNH, k_BTKH, v_BTKH, mask_B1TS)
    kw["use_bias"] = False
    return Projection(
        "btnh,nhd->btd", (n, h, d), ("heads", "head_dim", "embed"), name="out", **kw
    )(out_BTNH)

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
