"""Sampling settings and their draws on device (JAX, float32).

`Sampling` holds temperature, top-k and top-p. The next-token distribution (`probabilities`)
is the one-hot argmax when greedy (temperature 0), so speculative acceptance treats greedy and
sampled decoding alike and never divides by a zero temperature; otherwise temperature scales
the logits, top-k then top-p truncate (ties at the cut broken by token id) and renormalize.
Settings are static (one compile each). The float64 numpy reference the tests compare with is
`tests/efficiency/serving/reference.py`.
"""

import dataclasses

import jax
import jax.numpy as jnp

from efficiency.backends.cpu import argmax
from efficiency.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Sampling:
  """temperature (0 = greedy), top_k (0 = all tokens) and top_p (1 = all tokens)."""

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if self.temperature < 0:
      raise ConfigError(f"temperature={self.temperature} must be >= 0 (0 is greedy)")
    if self.top_k < 0:
      raise ConfigError(f"top_k={self.top_k} must be >= 0 (0 keeps every token)")
    if not 0 < self.top_p <= 1:
      raise ConfigError(f"top_p={self.top_p} must be in (0, 1] (1 keeps every token)")


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
    return jax.nn.one_hot(argmax(logits_BV), logits_BV.shape[-1], dtype=jnp.float32)
  probs_BV = jax.nn.softmax(logits_BV / sampling.temperature, axis=-1)
  if sampling.top_k or sampling.top_p < 1:
    probs_BV = truncate(probs_BV, sampling.top_k, sampling.top_p)
  return probs_BV


def draw(keys_B: jnp.ndarray, probs_BV: jnp.ndarray, one_hot: bool = False) -> jnp.ndarray:
  """One token per row from probs_BV [B, V], row b drawn with keys_B[b]: int32 [B]. With
  `one_hot` (every row one-hot, as greedy settings give) the argmax, drawing nothing."""
  if one_hot:
    return argmax(probs_BV)
  # Inverse CDF on one uniform per row (a Gumbel draw would cost V random numbers per row).
  cdf_BV = jnp.cumsum(probs_BV.astype(jnp.float32), axis=-1)
  u_B1 = jax.vmap(jax.random.uniform)(keys_B)[:, None] * cdf_BV[:, -1:]
  token_B = jnp.sum(cdf_BV <= u_B1, axis=-1)
  return jnp.minimum(token_B, probs_BV.shape[-1] - 1).astype(jnp.int32)


def sample(keys_B: jnp.ndarray, logits_BV: jnp.ndarray, sampling: Sampling) -> jnp.ndarray:
  """Next tokens [B] under `sampling` (greedy takes the argmax and draws nothing)."""
  if sampling.temperature == 0:
    return argmax(logits_BV)
  return draw(keys_B, probabilities(logits_BV, sampling))
