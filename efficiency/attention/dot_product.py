"""Grouped scaled dot-product attention written plainly in jnp (no T x T beyond the scores)."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from efficiency.backends.cpu import reduce_queries
from efficiency.quant.einsum import attention_einsum

NEG_INF = -1e30


def _reduce_products(q_BTKGH: jnp.ndarray, keys: jnp.ndarray, v_BKSH: jnp.ndarray,
                     scale: float, keys_slots_last: bool,
                     ) -> tuple[jnp.ndarray, Callable[[jnp.ndarray], jnp.ndarray]]:
  """For a few queries over a heads-major cache: the scores [B, K, G, T, S] and the value
  product (probs [B, K, G, T, S] -> [B, T, K, G, H]), in float32, each a multiply-reduce that
  reads the cache once as it lies. Keys are [B, K, S, H], or [B, K, H, S] with
  `keys_slots_last`, where the score product sums over H with the slots on the vector lanes.

  As dots these are batched (row, KV head) matrix products with 1-8 columns, which XLA's CPU
  backend ran one small GEMM at a time: at batch 8 the value products alone took half of a
  decode call (BENCHMARKS.md, Decoding).
  """
  f32 = jnp.float32
  q_BKGTH = q_BTKGH.transpose(0, 2, 3, 1, 4).astype(f32)
  if keys_slots_last:
    scores_BKGTS = (q_BKGTH[..., None] * keys[:, :, None, None].astype(f32)).sum(-2) * scale
  else:
    scores_BKGTS = (q_BKGTH[..., None, :] * keys[:, :, None, None].astype(f32)).sum(-1) * scale
  return scores_BKGTS, lambda probs_BKGTS: (
      probs_BKGTS.astype(f32).transpose(0, 3, 1, 2, 4)[..., None]
      * v_BKSH[:, None, :, None].astype(f32)
  ).sum(-2)


def grouped_attention(
    q_BTNH: jnp.ndarray,
    keys: jnp.ndarray,
    values: jnp.ndarray,
    mask_B1TS: jnp.ndarray,
    bias_1NTS: jnp.ndarray | None = None,
    scale: float | None = None,
    quant: ml_collections.ConfigDict | None = None,
    heads_major: bool = False,
    keys_slots_last: bool = False,
) -> jnp.ndarray:
  """Softmax attention where N query heads share K key/value heads (N % K == 0).

  Scores and softmax are computed in float32. Rows whose mask is all False (padding) output 0.
  `bias_1NTS` may have a leading 1 or B. Values may have their own head dim V: returns [B, T, N, V].
  Both products run in float unless `quant.attention` is set (see efficiency.quant.einsum).
  Keys and values are [B, S, K, H], or [B, K, S, H] with `heads_major` (a heads-major cache),
  whose keys may be [B, K, H, S] (`keys_slots_last`).
  """
  einsum = attention_einsum(quant)
  b, t, n, h = q_BTNH.shape
  k = values.shape[1 if heads_major else 2]
  kv = "bksh" if heads_major else "bskh"
  key_spec = "bkhs" if keys_slots_last else kv
  g = n // k
  scale = h**-0.5 if scale is None else scale
  q_BTKGH = q_BTNH.reshape(b, t, k, g, h)
  if heads_major and quant is None and reduce_queries(t * g):
    scores_BKGTS, attend = _reduce_products(q_BTKGH, keys, values, scale, keys_slots_last)
  else:
    scores_BKGTS = einsum(f"btkgh,{key_spec}->bkgts", q_BTKGH, keys).astype(jnp.float32) * scale
    attend = lambda probs_BKGTS: einsum(f"bkgts,{kv}->btkgh", probs_BKGTS, values)
  if bias_1NTS is not None:
    scores_BKGTS += bias_1NTS.reshape(bias_1NTS.shape[0], k, g, *bias_1NTS.shape[2:])
  mask_B11TS = mask_B1TS[:, :, None]
  scores_BKGTS = jnp.where(mask_B11TS, scores_BKGTS, NEG_INF)
  probs_BKGTS = jax.nn.softmax(scores_BKGTS, axis=-1)
  probs_BKGTS = jnp.where(mask_B11TS, probs_BKGTS, 0.0).astype(values.dtype)
  out_BTKGH = attend(probs_BKGTS).astype(values.dtype)
  return out_BTKGH.reshape(b, t, n, values.shape[-1])
