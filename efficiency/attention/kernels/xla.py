"""The reference implementation: scores materialized by XLA, [B, N, T, T] (or the banded
[T / w, w, 2w] form under a window). Every other implementation is tested against it."""

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from efficiency.attention.dot_product import grouped_attention
from efficiency.attention.kernels.case import AttentionCase
from efficiency.attention.masks import causal_segment_mask
from efficiency.attention.windowed import windowed_attention


def unsupported(case: AttentionCase, platform: str) -> str | None:
  """Every case runs everywhere."""
  del case, platform
  return None


def attend(
    q_BTNH: jnp.ndarray,
    k_BTKH: jnp.ndarray,
    v_BTKV: jnp.ndarray,
    segment_ids_BT: jnp.ndarray,
    positions_BT: jnp.ndarray,
    *,
    window: int | None = None,
    bias: nn.Module | None = None,
    scale: float | None = None,
    quant: ml_collections.ConfigDict | None = None,
) -> jnp.ndarray:
  if window is not None:
    return windowed_attention(
        q_BTNH, k_BTKH, v_BTKV, segment_ids_BT, positions_BT, window, bias, scale
    )
  mask_B1TS = causal_segment_mask(segment_ids_BT, segment_ids_BT, positions_BT, positions_BT)
  bias_BNTS = None if bias is None else bias(positions_BT, positions_BT)
  return grouped_attention(q_BTNH, k_BTKH, v_BTKV, mask_B1TS, bias_BNTS, scale, quant)
