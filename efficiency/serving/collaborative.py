"""Collaborative decoding targets: the distribution r that several models' logits define, and
each model's own proposal distribution q (what it drafts from when it proposes).

- `Single`: one model under the sampling settings (plain and speculative decoding).
- `WeightedEnsemble`: r = sampling(sum_k lambda_k softmax(l_k / tau_k)); each model's
  temperature tau_k applies before its softmax, the sampling settings to the mixture
  (temperature 1 keeps the mixture as is, 0 takes its argmax).
- `Contrastive`: r = sampling(l_expert - mu * l_amateur) on raw logits; models are
  (expert, amateur).
"""

import dataclasses
from collections.abc import Sequence

import numpy as np

from efficiency.errors import ConfigError
from efficiency.serving.sampling import Sampling, distribution, softmax


def _log(probs: np.ndarray) -> np.ndarray:
  with np.errstate(divide="ignore"):
    return np.log(probs)


@dataclasses.dataclass(frozen=True)
class Single:
  """One model's own distribution under `sampling`."""

  sampling: Sampling
  num_models: int = 1

  def target(self, logits: Sequence[np.ndarray]) -> np.ndarray:
    return distribution(logits[0], self.sampling)

  def proposal(self, k: int, logits_V: np.ndarray) -> np.ndarray:
    del k
    return distribution(logits_V, self.sampling)


@dataclasses.dataclass(frozen=True)
class WeightedEnsemble:
  """sum_k weights[k] softmax(l_k / temperatures[k]), then `sampling`."""

  weights: tuple[float, ...]
  sampling: Sampling
  temperatures: tuple[float, ...] | None = None

  def __post_init__(self):
    w = np.asarray(self.weights, np.float64)
    if len(w) < 2:
      raise ConfigError(f"weights={list(self.weights)}: a weighted ensemble needs >= 2 models")
    if (w < 0).any() or abs(w.sum() - 1) > 1e-6:
      raise ConfigError(f"weights={list(self.weights)} must be >= 0 and sum to 1")
    temps = self.temperatures or (1.0,) * len(w)
    if len(temps) != len(w) or min(temps) <= 0:
      raise ConfigError(
          f"temperatures={list(temps)} must be one value > 0 per model ({len(w)} models)"
      )

  @property
  def num_models(self) -> int:
    return len(self.weights)

  def _probs(self, k: int, logits_V: np.ndarray) -> np.ndarray:
    tau = self.temperatures[k] if self.temperatures else 1.0
    return softmax(np.asarray(logits_V, np.float64) / tau)

  def target(self, logits: Sequence[np.ndarray]) -> np.ndarray:
    pairs = enumerate(zip(self.weights, logits, strict=True))
    mixture = sum(w * self._probs(k, logits_V) for k, (w, logits_V) in pairs)
    return distribution(_log(mixture), self.sampling)

  def proposal(self, k: int, logits_V: np.ndarray) -> np.ndarray:
    return distribution(_log(self._probs(k, logits_V)), self.sampling)


@dataclasses.dataclass(frozen=True)
class Contrastive:
  """sampling(l_expert - mu * l_amateur); models are (expert, amateur)."""

  mu: float
  sampling: Sampling
  num_models: int = 2

  def __post_init__(self):
    if self.mu < 0:
      raise ConfigError(f"mu={self.mu} must be >= 0")

  def target(self, logits: Sequence[np.ndarray]) -> np.ndarray:
    expert, amateur = (np.asarray(x, np.float64) for x in logits)
    return distribution(expert - self.mu * amateur, self.sampling)

  def proposal(self, k: int, logits_V: np.ndarray) -> np.ndarray:
    del k
    return distribution(logits_V, self.sampling)


def collaboration(
    method: str, n: int, weights: list[str] | None, mu: float, sampling: Sampling
) -> tuple[WeightedEnsemble | Contrastive, int]:
  """The target of `n` models by `method` (`we`: weighted ensemble, uniform unless `weights`;
  `cd`: contrastive with strength `mu`) and the naive proposer's index."""
  if method == "we":
    w = tuple(float(x) for x in weights) if weights else (1.0 / n,) * n
    if len(w) != n:
      raise ConfigError(f"weights={list(w)} needs one weight per model ({n} models)")
    return WeightedEnsemble(w, sampling), 0
  if n != 2:
    raise ConfigError(f"method=cd takes 2 models (expert, amateur); got {n}")
  return Contrastive(mu, sampling), 1
