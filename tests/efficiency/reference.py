"""Slow, plain references for attention tests: full score matrices and explicit masks (numpy)."""

import numpy as np


def allowed_mask(segment_ids: np.ndarray, window: int | None = None) -> np.ndarray:
  """[B, 1, T, T] bool: key j <= query i, same non-padding document, and i - j < window."""
  b, t = segment_ids.shape
  i, j = np.arange(t)[:, None], np.arange(t)[None, :]
  ok = np.broadcast_to(j <= i, (b, t, t)).copy()
  if window is not None:
    ok &= i - j < window
  ok &= segment_ids[:, :, None] == segment_ids[:, None, :]
  ok &= (segment_ids != 0)[:, None, :]
  return ok[:, None]


def attention(q, k, v, allowed, bias=None, scale=None) -> np.ndarray:
  """q [B,T,N,H], k [B,S,K,H], v [B,S,K,V], allowed [B,1|N,T,S], bias [B|1,N,T,S] -> [B,T,N,V].

  Key/value heads are repeated over their query groups; rows with no allowed key output 0."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  n, kh = q.shape[2], k.shape[2]
  k, v = np.repeat(k, n // kh, axis=2), np.repeat(v, n // kh, axis=2)
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  scores = np.einsum("btnh,bsnh->bnts", q, k) * scale
  if bias is not None:
    scores = scores + np.asarray(bias, np.float64)
  scores = np.where(allowed, scores, -np.inf)
  with np.errstate(invalid="ignore"):
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs = np.nan_to_num(probs / probs.sum(-1, keepdims=True))
  return np.einsum("bnts,bsnv->btnv", probs, v)


def rms_norm(x, scale, eps=1e-6) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * np.asarray(scale)
