"""Grouped scaled dot-product attention written plainly in jnp (no T x T beyond the scores)."""

import jax
import jax.numpy as jnp
import ml_collections

from efficiency.quant.einsum import attention_einsum

NEG_INF = -1e30


def grouped_attention(
    q_BTNH: jnp.ndarray,
    keys: jnp.ndarray,
    values: jnp.ndarray,
    mask_B1TS: jnp.ndarray,
    bias_1NTS: jnp.ndarray | None = None,
    scale: float | None = None,
    quant: ml_collections.ConfigDict | None = None,
    heads_major: bool = False,
) -> jnp.ndarray:
  """Softmax attention where N query heads share K key/value heads (N % K == 0).

  Scores and softmax are computed in float32. Rows whose mask is all False (padding) output 0.
  `bias_1NTS` may have a leading 1 or B. Values may have their own head dim V: returns [B, T, N, V].
  Both products run in float unless `quant.attention` is set (see efficiency.quant.einsum).
  Keys and values are [B, S, K, H], or [B, K, S, H] with `heads_major` (a heads-major cache).
  """
  einsum = attention_einsum(quant)
  b, t, n, h = q_BTNH.shape
  k = keys.shape[1 if heads_major else 2]
  kv = "bksh" if heads_major else "bskh"
  g = n // k
  scale = h**-0.5 if scale is None else scale
  q_BTKGH = q_BTNH.reshape(b, t, k, g, h)
  scores_BKGTS = einsum(f"btkgh,{kv}->bkgts", q_BTKGH, keys).astype(jnp.float32) * scale
  if bias_1NTS is not None:
    scores_BKGTS += bias_1NTS.reshape(bias_1NTS.shape[0], k, g, *bias_1NTS.shape[2:])
  mask_B11TS = mask_B1TS[:, :, None]
  scores_BKGTS = jnp.where(mask_B11TS, scores_BKGTS, NEG_INF)
  probs_BKGTS = jax.nn.softmax(scores_BKGTS, axis=-1)
  probs_BKGTS = jnp.where(mask_B11TS, probs_BKGTS, 0.0).astype(values.dtype)
  out_BTKGH = einsum(f"bkgts,{kv}->btkgh", probs_BKGTS, values)
  return out_BTKGH.reshape(b, t, n, values.shape[-1])
