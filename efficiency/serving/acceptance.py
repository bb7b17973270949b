"""Speculative acceptance on device, batched (Leviathan et al. 2023): a token x drafted from q is
kept with probability min(1, p(x) / q(x)) while every earlier draft was kept; at the first
rejection the next token is drawn from normalize(max(0, p - q)), and when all are kept from p at
the bonus position. Keeping with min(p, q) plus the residual gives exactly p for any q, so
speculative decoding and CoS sample exactly from their target. The float64 reference is
`tests/efficiency/serving/reference.py` (`residual`, `accept_or_resample`)."""

import jax
import jax.numpy as jnp

from efficiency.serving.request import step_keys
from efficiency.serving.sampling import draw


def accept(
    keys_B: jnp.ndarray, drafts_Bg: jnp.ndarray, q_BgV: jnp.ndarray, p_BGV: jnp.ndarray,
    lengths_B: jnp.ndarray | None = None, one_hot: bool = False,
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Per row: how many leading drafts are kept (a, 0..gamma) and the token after them (from
  the residual at the first rejection, from p at the bonus position when all are kept). Only
  the first lengths_B[b] drafts of row b count (all when None). `one_hot`: p and q are one-hot
  (greedy), so a draft is kept iff p has it, and no uniform is drawn."""
  b, gamma = drafts_Bg.shape
  p_draft_Bg = jnp.take_along_axis(p_BGV[:, :gamma], drafts_Bg[..., None], -1)[..., 0]
  q_draft_Bg = jnp.take_along_axis(q_BgV, drafts_Bg[..., None], -1)[..., 0]
  if one_hot:
    u_Bg = jnp.zeros((b, gamma))
  else:
    u_Bg = jax.vmap(lambda k: jax.random.uniform(k, (gamma,)))(step_keys(keys_B, gamma))
  kept_Bg = u_Bg * q_draft_Bg < p_draft_Bg
  if lengths_B is not None:
    kept_Bg &= jnp.arange(gamma) < lengths_B[:, None]
  a_B = jnp.cumprod(kept_Bg.astype(jnp.int32), axis=-1).sum(-1)
  rows_B = jnp.arange(b)
  p_BV = p_BGV[rows_B, a_B]
  q_BV = jnp.concatenate([q_BgV, jnp.zeros_like(q_BgV[:, :1])], axis=1)[rows_B, a_B]
  if lengths_B is not None:
    q_BV = jnp.where((a_B < lengths_B)[:, None], q_BV, 0.0)
  residual_BV = jnp.maximum(p_BV - q_BV, 0.0)
  total_B1 = residual_BV.sum(-1, keepdims=True)
  residual_BV = jnp.where(total_B1 > 0, residual_BV / jnp.where(total_B1 > 0, total_B1, 1), p_BV)
  return a_B, draw(step_keys(keys_B, gamma + 1), residual_BV, one_hot)
