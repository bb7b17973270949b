"""Sampling settings as explicit next-token distributions (numpy, float64).

Greedy decoding (temperature 0) is the one-hot distribution on the argmax, so speculative
acceptance treats greedy and sampled decoding alike and never divides by a zero temperature.
"""

import dataclasses

import numpy as np

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


def softmax(x_V: np.ndarray) -> np.ndarray:
  """Softmax over the last axis in float64."""
  x = np.asarray(x_V, np.float64)
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def one_hot_argmax(x_V: np.ndarray) -> np.ndarray:
  out = np.zeros(x_V.shape, np.float64)
  np.put_along_axis(out, np.argmax(x_V, axis=-1)[..., None], 1.0, axis=-1)
  return out


def truncate(probs_V: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
  """Keeps the top_k most likely tokens, then the smallest most-likely set whose mass reaches
  top_p, and renormalizes (ties at the cut broken by token id)."""
  probs = np.asarray(probs_V, np.float64)
  order = np.argsort(-probs, axis=-1, kind="stable")
  sorted_p = np.take_along_axis(probs, order, axis=-1)
  keep = np.ones_like(sorted_p, bool)
  if top_k:
    keep[..., top_k:] = False
  if top_p < 1:
    before = np.cumsum(sorted_p, axis=-1) - sorted_p  # mass of the more likely tokens
    keep &= before < top_p
  kept = np.zeros_like(probs)
  np.put_along_axis(kept, order, np.where(keep, sorted_p, 0.0), axis=-1)
  return kept / kept.sum(axis=-1, keepdims=True)


def distribution(logits_V: np.ndarray, sampling: Sampling) -> np.ndarray:
  """The next-token distribution the settings sample from (one-hot argmax when greedy)."""
  if sampling.temperature == 0:
    return one_hot_argmax(np.asarray(logits_V, np.float64))
  probs = softmax(np.asarray(logits_V, np.float64) / sampling.temperature)
  if sampling.top_k or sampling.top_p < 1:
    probs = truncate(probs, sampling.top_k, sampling.top_p)
  return probs


def sample(probs_V: np.ndarray, rng: np.random.Generator) -> int:
  """One token from a distribution (inverse CDF on one uniform draw)."""
  cdf = np.cumsum(probs_V)
  return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(cdf) - 1))
