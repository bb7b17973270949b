"""Sampling settings on device (JAX, float32): the next-token distribution and draws from it.

The same distributions as `sampling.distribution` (the float64 numpy reference the tests compare
with): greedy is the one-hot argmax, temperature scales the logits, top-k then top-p truncate
(ties at the cut broken by token id) and renormalize. Settings are static (one compile each).
"""

import jax
import jax.numpy as jnp

from efficiency.serving.sampling import Sampling


def truncate(probs_BV: jnp.ndarray, top_k: int, top_p: float) -> jnp.ndarray:
  """Keeps the top_k most likely tokens, then the smallest most-likely set whose mass reaches
  top_p, and renormalizes."""
  order_BV = jnp.argsort(-probs_BV, axis=-1, stable=True)
  sorted_BV = jnp.take_along_axis(probs_BV, order_BV, axis=-1)
  keep_BV = jnp.ones(sorted_BV.shape, bool)
  if top_k:
    keep_BV &= jnp.arange(sorted_BV.shape[-1]) < top_k
  if top_p < 1:
    before_BV = jnp.cumsum(sorted_BV, axis=-1) - sorted_BV  # mass of the more likely tokens
    keep_BV &= before_BV < top_p
  kept_sorted_BV = jnp.where(keep_BV, sorted_BV, 0.0)
  kept_BV = jnp.take_along_axis(kept_sorted_BV, jnp.argsort(order_BV, axis=-1), axis=-1)
  return kept_BV / kept_BV.sum(axis=-1, keepdims=True)


def probabilities(logits_BV: jnp.ndarray, sampling: Sampling) -> jnp.ndarray:
  """The distribution [..., V] (float32) that `sampling` draws from given `logits_BV`."""
  logits_BV = logits_BV.astype(jnp.float32)
  if sampling.temperature == 0:
    return jax.nn.one_hot(jnp.argmax(logits_BV, axis=-1), logits_BV.shape[-1], dtype=jnp.float32)
  probs_BV = jax.nn.softmax(logits_BV / sampling.temperature, axis=-1)
  if sampling.top_k or sampling.top_p < 1:
    probs_BV = truncate(probs_BV, sampling.top_k, sampling.top_p)
  return probs_BV


def draw(keys_B: jnp.ndarray, probs_BV: jnp.ndarray, one_hot: bool = False) -> jnp.ndarray:
  """One token per row from probs_BV [B, V], row b drawn with keys_B[b]: int32 [B]. With
  `one_hot` (every row one-hot, as greedy settings give) the argmax, drawing nothing."""
  if one_hot:
    return jnp.argmax(probs_BV, axis=-1).astype(jnp.int32)
  # Inverse CDF on one uniform per row (a Gumbel draw would cost V random numbers per row).
  cdf_BV = jnp.cumsum(probs_BV.astype(jnp.float32), axis=-1)
  u_B1 = jax.vmap(jax.random.uniform)(keys_B)[:, None] * cdf_BV[:, -1:]
  token_B = jnp.sum(cdf_BV <= u_B1, axis=-1)
  return jnp.minimum(token_B, probs_BV.shape[-1] - 1).astype(jnp.int32)


def sample(keys_B: jnp.ndarray, logits_BV: jnp.ndarray, sampling: Sampling) -> jnp.ndarray:
  """Next tokens [B] under `sampling` (greedy takes the argmax and draws nothing)."""
  if sampling.temperature == 0:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  return draw(keys_B, probabilities(logits_BV, sampling))
