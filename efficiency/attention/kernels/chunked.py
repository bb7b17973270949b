"""Memory-efficient attention in plain JAX: an online softmax over key blocks (flash-style).

The row is cut into blocks of `block` tokens. Each query block visits only the key blocks its
mask can reach (up to its own block under causality, from `window` back when there is one), so
fully masked blocks cost nothing, and keeps a running max, normalizer and output. The backward
pass is written by hand: it recomputes each block's probabilities from the saved log-sum-exp,
so neither pass ever holds more than one [block, block] score tile per head; memory grows
linearly in T.

Masks come from segment ids (same non-padding document) and indices (causal, window), exactly as
`efficiency.attention.masks.causal_segment_mask` and `windowed_attention` define them. A score
bias is given as a pure function `fn(params, q_positions, k_positions) -> [B, N, tq, tk]` with
its parameters, so a learned bias (T5 relative) gets its gradient block by block.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from efficiency.attention.dot_product import NEG_INF
from efficiency.attention.kernels.case import QUANTIZED, AttentionCase

BiasFn = Callable[[Any, jnp.ndarray, jnp.ndarray], jnp.ndarray]
BLOCK = 256


def chunked_attention(
    q_BTNH: jnp.ndarray,
    k_BTKH: jnp.ndarray,
    v_BTKV: jnp.ndarray,
    segment_ids_BT: jnp.ndarray,
    positions_BT: jnp.ndarray,
    *,
    window: int | None = None,
    bias: tuple[Any, BiasFn] | None = None,
    scale: float | None = None,
    block: int = BLOCK,
) -> jnp.ndarray:
  """Causal self-attention within documents, optionally banded to the last `window` keys.

  Same contract as `grouped_attention` under `causal_segment_mask` (padding queries output 0);
  `bias` is (params, fn) or None. Returns [B, T, N, V].
  """
  b, t, n, h = q_BTNH.shape
  scale = h**-0.5 if scale is None else scale
  c = min(block, t)
  pad = -t % c
  if pad:
    pad_BT = ((0, 0), (0, pad))
    pad_BTXX = pad_BT + ((0, 0), (0, 0))
    q_BTNH, k_BTKH, v_BTKV = (jnp.pad(x, pad_BTXX) for x in (q_BTNH, k_BTKH, v_BTKV))
    segment_ids_BT = jnp.pad(segment_ids_BT, pad_BT)
    positions_BT = jnp.pad(positions_BT, pad_BT)
  params, fn = bias if bias is not None else ((), None)
  attend = _flash(fn, window, float(scale), c)
  out_BTNV = attend(q_BTNH, k_BTKH, v_BTKV, segment_ids_BT, positions_BT, params)
  return out_BTNV[:, :t]


def _blocks(x_BT: jnp.ndarray, c: int) -> jnp.ndarray:
  """[B, T, ...] -> [T / c, B, c, ...], blocks leading so loops index them."""
  b, t = x_BT.shape[:2]
  return jnp.moveaxis(x_BT.reshape(b, t // c, c, *x_BT.shape[2:]), 1, 0)


def _unblock(x_nBc: jnp.ndarray) -> jnp.ndarray:
  """[T / c, B, c, ...] -> [B, T, ...]."""
  x_BncX = jnp.moveaxis(x_nBc, 0, 1)
  return x_BncX.reshape(x_BncX.shape[0], -1, *x_BncX.shape[3:])


def _key_range(i: jnp.ndarray, c: int, window: int | None) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Key blocks [lo, hi) that query block i can see."""
  lo = 0 if window is None else jnp.maximum(0, (i * c - window + 1) // c)
  return lo, i + 1


def _query_range(
    j: jnp.ndarray, c: int, n_blocks: int, window: int | None
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Query blocks [lo, hi) that can see key block j."""
  if window is None:
    return j, n_blocks
  last_query = (j + 1) * c - 1 + window - 1  # the last key of block j is still in its window
  return j, jnp.minimum(n_blocks, last_query // c + 1)


def _flash(fn: BiasFn | None, window: int | None, scale: float, c: int):
  """The attention with its hand-written VJP, for one bias function, window, scale and block."""

  def scores(q_BcKGH, k_BcKH, seg_q_Bc, seg_k_Bc, pos_q_Bc, pos_k_Bc, i, j, params):
    """Scaled, biased scores [B, K, G, c, c] of one block pair and their mask [B, 1, 1, c, c]."""
    b, _, k, g, _ = q_BcKGH.shape
    s_BKGqs = jnp.einsum(
        "bqkgh,bskh->bkgqs", q_BcKGH, k_BcKH, preferred_element_type=jnp.float32
    ) * scale
    if fn is not None:
      s_BKGqs += fn(params, pos_q_Bc, pos_k_Bc).reshape(b, k, g, c, c)
    q_index = i * c + jnp.arange(c)[:, None]
    k_index = j * c + jnp.arange(c)[None, :]
    visible_qs = k_index <= q_index
    if window is not None:
      visible_qs &= q_index - k_index < window
    mask_Bqs = (
        visible_qs[None]
        & (seg_q_Bc[:, :, None] == seg_k_Bc[:, None, :])
        & (seg_k_Bc != 0)[:, None, :]
    )
    return s_BKGqs, mask_Bqs[:, None, None]

  def forward(q_BTNH, k_BTKH, v_BTKV, seg_BT, pos_BT, params):
    b, t, n, h = q_BTNH.shape
    k, v = k_BTKH.shape[2], v_BTKV.shape[3]
    g = n // k
    q_nBcKGH = _blocks(q_BTNH.reshape(b, t, k, g, h), c)
    k_nBcKH, v_nBcKV = _blocks(k_BTKH, c), _blocks(v_BTKV, c)
    seg_nBc, pos_nBc = _blocks(seg_BT, c), _blocks(pos_BT, c)

    def query_block(i):
      q_BcKGH = q_nBcKGH[i]

      def key_block(j, carry):
        m_BKGq, l_BKGq, acc_BKGqV = carry
        s_BKGqs, mask = scores(
            q_BcKGH, k_nBcKH[j], seg_nBc[i], seg_nBc[j], pos_nBc[i], pos_nBc[j], i, j, params
        )
        m_new = jnp.maximum(m_BKGq, jnp.where(mask, s_BKGqs, NEG_INF).max(-1))
        p_BKGqs = jnp.where(mask, jnp.exp(s_BKGqs - m_new[..., None]), 0.0)
        correction = jnp.exp(m_BKGq - m_new)
        pv_BKGqV = jnp.einsum(
            "bkgqs,bskv->bkgqv", p_BKGqs.astype(v_nBcKV.dtype), v_nBcKV[j],
            preferred_element_type=jnp.float32,
        )
        l_BKGq = l_BKGq * correction + p_BKGqs.sum(-1)
        return m_new, l_BKGq, acc_BKGqV * correction[..., None] + pv_BKGqV

      init = (
          jnp.full((b, k, g, c), NEG_INF, jnp.float32),
          jnp.zeros((b, k, g, c), jnp.float32),
          jnp.zeros((b, k, g, c, v), jnp.float32),
      )
      lo, hi = _key_range(i, c, window)
      m_BKGq, l_BKGq, acc_BKGqV = jax.lax.fori_loop(lo, hi, key_block, init)
      seen_BKGq = l_BKGq > 0
      l_BKGq = jnp.where(seen_BKGq, l_BKGq, 1.0)  # rows that see nothing (padding) output 0
      out_BKGqV = jnp.where(seen_BKGq[..., None], acc_BKGqV / l_BKGq[..., None], 0.0)
      lse_BKGq = jnp.where(seen_BKGq, m_BKGq + jnp.log(l_BKGq), 0.0)
      return jnp.moveaxis(out_BKGqV, 3, 1).astype(v_BTKV.dtype), lse_BKGq

    out_nBcKGV, lse_nBKGc = jax.lax.map(query_block, jnp.arange(t // c))
    return _unblock(out_nBcKGV).reshape(b, t, n, v), lse_nBKGc

  @jax.custom_vjp
  def attend(q_BTNH, k_BTKH, v_BTKV, seg_BT, pos_BT, params):
    return forward(q_BTNH, k_BTKH, v_BTKV, seg_BT, pos_BT, params)[0]

  def attend_fwd(q_BTNH, k_BTKH, v_BTKV, seg_BT, pos_BT, params):
    out_BTNV, lse_nBKGc = forward(q_BTNH, k_BTKH, v_BTKV, seg_BT, pos_BT, params)
    return out_BTNV, (q_BTNH, k_BTKH, v_BTKV, seg_BT, pos_BT, params, out_BTNV, lse_nBKGc)

  def attend_bwd(residuals, dout_BTNV):
    q_BTNH, k_BTKH, v_BTKV, seg_BT, pos_BT, params, out_BTNV, lse_nBKGc = residuals
    b, t, n, h = q_BTNH.shape
    k, v = k_BTKH.shape[2], v_BTKV.shape[3]
    g, n_blocks = n // k, t // c
    q_nBcKGH = _blocks(q_BTNH.reshape(b, t, k, g, h), c)
    k_nBcKH, v_nBcKV = _blocks(k_BTKH, c), _blocks(v_BTKV, c)
    seg_nBc, pos_nBc = _blocks(seg_BT, c), _blocks(pos_BT, c)
    dout_nBcKGV = _blocks(dout_BTNV.reshape(b, t, k, g, v), c)
    # D_i = rowsum(dO_i * O_i): the softmax's Jacobian term, per query.
    delta_nBKGc = jnp.moveaxis(
        _blocks((dout_BTNV.astype(jnp.float32) * out_BTNV.astype(jnp.float32)).sum(-1), c)
        .reshape(n_blocks, b, c, k, g), 2, 4,
    )
    bias_vjp = None
    if fn is not None:
      def bias_vjp(i, j, ds_BKGqs):
        _, pull = jax.vjp(lambda p: fn(p, pos_nBc[i], pos_nBc[j]), params)
        return pull(ds_BKGqs.reshape(b, n, c, c))[0]

    def key_block(carry, j):
      dq_nBcKGH, dparams = carry
      k_BcKH, v_BcKV = k_nBcKH[j], v_nBcKV[j]

      def query_block(i, inner):
        dq_nBcKGH, dparams, dk_BcKH, dv_BcKV = inner
        q_BcKGH, dout_BcKGV = q_nBcKGH[i], dout_nBcKGV[i]
        s_BKGqs, mask = scores(
            q_BcKGH, k_BcKH, seg_nBc[i], seg_nBc[j], pos_nBc[i], pos_nBc[j], i, j, params
        )
        p_BKGqs = jnp.where(mask, jnp.exp(s_BKGqs - lse_nBKGc[i][..., None]), 0.0)
        dv_BcKV += jnp.einsum(
            "bkgqs,bqkgv->bskv", p_BKGqs.astype(dout_BcKGV.dtype), dout_BcKGV,
            preferred_element_type=jnp.float32,
        )
        dp_BKGqs = jnp.einsum(
            "bqkgv,bskv->bkgqs", dout_BcKGV, v_BcKV, preferred_element_type=jnp.float32
        )
        ds_BKGqs = p_BKGqs * (dp_BKGqs - delta_nBKGc[i][..., None])
        if bias_vjp is not None:
          dparams = jax.tree.map(jnp.add, dparams, bias_vjp(i, j, ds_BKGqs))
        ds_BKGqs = (ds_BKGqs * scale).astype(q_BcKGH.dtype)
        dq_BcKGH = jnp.einsum(
            "bkgqs,bskh->bqkgh", ds_BKGqs, k_BcKH, preferred_element_type=jnp.float32
        )
        dq_nBcKGH = dq_nBcKGH.at[i].add(dq_BcKGH)
        dk_BcKH += jnp.einsum(
            "bkgqs,bqkgh->bskh", ds_BKGqs, q_BcKGH, preferred_element_type=jnp.float32
        )
        return dq_nBcKGH, dparams, dk_BcKH, dv_BcKV

      init = (dq_nBcKGH, dparams, jnp.zeros(k_BcKH.shape, jnp.float32),
              jnp.zeros(v_BcKV.shape, jnp.float32))
      lo, hi = _query_range(j, c, n_blocks, window)
      dq_nBcKGH, dparams, dk_BcKH, dv_BcKV = jax.lax.fori_loop(lo, hi, query_block, init)
      return (dq_nBcKGH, dparams), (dk_BcKH, dv_BcKV)

    init = (jnp.zeros(q_nBcKGH.shape, jnp.float32), jax.tree.map(jnp.zeros_like, params))
    (dq_nBcKGH, dparams), (dk_nBcKH, dv_nBcKV) = jax.lax.scan(
        key_block, init, jnp.arange(n_blocks)
    )
    dq_BTNH = _unblock(dq_nBcKGH).reshape(b, t, n, h).astype(q_BTNH.dtype)
    return (
        dq_BTNH, _unblock(dk_nBcKH).astype(k_BTKH.dtype), _unblock(dv_nBcKV).astype(v_BTKV.dtype),
        None, None, dparams,
    )

  attend.defvjp(attend_fwd, attend_bwd)
  return attend



def unsupported(case: AttentionCase, platform: str) -> str | None:
  """Runs everywhere, except AQT-quantized score/value products."""
  del platform
  return QUANTIZED if case.quantized else None


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
  """The registry's entry: the position encoding's bias module as its pure function."""
  del quant
  return chunked_attention(
      q_BTNH, k_BTKH, v_BTKV, segment_ids_BT, positions_BT, window=window,
      bias=None if bias is None else bias.as_function(), scale=scale, block=BLOCK,
  )
