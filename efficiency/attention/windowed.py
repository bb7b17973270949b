"""Banded local attention: each query sees the last `window` keys of its own document.

Queries are cut into chunks of `window`; each chunk scores only its own and the previous chunk's
keys, so scores are [.., T / window, window, 2 * window], never [T, T].
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from efficiency.attention.dot_product import NEG_INF


def _chunk(x_BT: jnp.ndarray, w: int, pad_value=0) -> jnp.ndarray:
  """[B, T, ...] -> [B, C, w, ...], padding T up to a multiple of w."""
  b, t = x_BT.shape[:2]
  c = -(-t // w)
  pad = [(0, 0), (0, c * w - t)] + [(0, 0)] * (x_BT.ndim - 2)
  return jnp.pad(x_BT, pad, constant_values=pad_value).reshape(b, c, w, *x_BT.shape[2:])


def _with_previous(x_BCW: jnp.ndarray, pad_value=0) -> jnp.ndarray:
  """[B, C, w, ...] -> [B, C, 2w, ...]: each chunk preceded by the previous chunk."""
  pad = [(0, 0), (1, 0)] + [(0, 0)] * (x_BCW.ndim - 2)
  prev = jnp.pad(x_BCW, pad, constant_values=pad_value)[:, :-1]
  return jnp.concatenate([prev, x_BCW], axis=2)


def mean_visible_keys(window: int, seq_len: int) -> float:
  """Keys a causal query sees on average under a `window` over a `seq_len` row: the mean over
  positions i of min(i + 1, window); (T + 1) / 2 when the window covers the row."""
  w = min(window, seq_len)
  return w - (w * (w - 1)) / (2 * seq_len)


def windowed_attention(
    q_BTNH: jnp.ndarray,
    k_BTKH: jnp.ndarray,
    v_BTKH: jnp.ndarray,
    segment_ids_BT: jnp.ndarray,
    positions_BT: jnp.ndarray,
    window: int,
    bias: nn.Module | None = None,
    scale: float | None = None,
) -> jnp.ndarray:
  """Causal, segment-isolated attention to keys j with i - window < j <= i. Returns [B, T, N, H].

  `bias` is a position encoding's score-bias module, called on the chunked positions.
  """
  b, t, n, h = q_BTNH.shape
  k = k_BTKH.shape[2]
  g, w = n // k, window
  scale = h**-0.5 if scale is None else scale
  q_BCWKGH = _chunk(q_BTNH, w).reshape(b, -1, w, k, g, h)
  k_BCSKH = _with_previous(_chunk(k_BTKH, w))
  v_BCSKH = _with_previous(_chunk(v_BTKH, w))
  c = q_BCWKGH.shape[1]
  index_CW = jnp.arange(c * w).reshape(c, w)
  q_index_CW1 = index_CW[:, :, None]
  k_index_C1S = _with_previous(index_CW[None], pad_value=-w - 1)[0][:, None, :]
  q_seg_BCW = _chunk(segment_ids_BT, w)
  k_seg_BCS = _with_previous(q_seg_BCW)
  mask_BCWS = (
      (k_index_C1S <= q_index_CW1)
      & (q_index_CW1 - k_index_C1S < w)
      & (q_seg_BCW[..., :, None] == k_seg_BCS[..., None, :])
      & (k_seg_BCS != 0)[..., None, :]
  )
  scores_BCKGWS = jnp.einsum("bcwkgh,bcskh->bckgws", q_BCWKGH, k_BCSKH).astype(jnp.float32)
  scores_BCKGWS *= scale
  if bias is not None:
    q_pos_BCW = _chunk(positions_BT, w)
    bias_BCNWS = bias(q_pos_BCW, _with_previous(q_pos_BCW))
    scores_BCKGWS += bias_BCNWS.reshape(b, c, k, g, w, 2 * w)
  mask_BC11WS = mask_BCWS[:, :, None, None]
  scores_BCKGWS = jnp.where(mask_BC11WS, scores_BCKGWS, NEG_INF)
  probs_BCKGWS = jax.nn.softmax(scores_BCKGWS, axis=-1)
  probs_BCKGWS = jnp.where(mask_BC11WS, probs_BCKGWS, 0.0).astype(v_BTKH.dtype)
  out_BCWKGH = jnp.einsum("bckgws,bcskh->bcwkgh", probs_BCKGWS, v_BCSKH)
  return out_BCWKGH.reshape(b, c * w, n, -1)[:, :t]
