"""Decoding targets: the distribution r that one or several models' logits define, and each
model's own proposal distribution q (what it drafts from when it proposes), on device (JAX,
float32). The float64 numpy reference is `tests/efficiency/serving/reference.py`.

- `Single`: one model under the sampling settings (plain and speculative decoding).
- `WeightedEnsemble`: r = sampling(sum_k lambda_k softmax(l_k / tau_k)); each model's
  temperature tau_k applies before its softmax, the sampling settings to the mixture
  (temperature 1 keeps the mixture as is, 0 takes its argmax).
- `Contrastive`: r = sampling(l_expert - mu * l_amateur) on raw logits; models are
  (expert, amateur).
"""

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from efficiency.errors import ConfigError
from efficiency.serving.sampling import Sampling, probabilities


@dataclasses.dataclass(frozen=True)
class Single:
  """One model's own distribution under `sampling`."""

  sampling: Sampling
  num_models: int = 1


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


@dataclasses.dataclass(frozen=True)
class Contrastive:
  """sampling(l_expert - mu * l_amateur); models are (expert, amateur)."""

  mu: float
  sampling: Sampling
  num_models: int = 2

  def __post_init__(self):
    if self.mu < 0:
      raise ConfigError(f"mu={self.mu} must be >= 0")


Collaboration = Single | WeightedEnsemble | Contrastive


def collaboration(
    method: str, n: int, weights: list[str] | None, mu: float, sampling: Sampling
) -> Collaboration:
  """The target of `n` models by `method` (`we`: weighted ensemble, uniform unless `weights`;
  `cd`: contrastive with strength `mu`)."""
  if method == "we":
    w = tuple(float(x) for x in weights) if weights else (1.0 / n,) * n
    if len(w) != n:
      raise ConfigError(f"weights={list(w)} needs one weight per model ({n} models)")
    return WeightedEnsemble(w, sampling)
  if n != 2:
    raise ConfigError(f"method=cd takes 2 models (expert, amateur); got {n}")
  return Contrastive(mu, sampling)


def member_probs(collab: WeightedEnsemble, k: int, logits_BV: jnp.ndarray) -> jnp.ndarray:
  """Model k's softmax at its own temperature (a weighted ensemble's mixture term)."""
  tau = collab.temperatures[k] if collab.temperatures else 1.0
  return jax.nn.softmax(logits_BV.astype(jnp.float32) / tau, axis=-1)


def target_probs(collab: Collaboration, logits: Sequence[jnp.ndarray]) -> jnp.ndarray:
  """r [..., V] from each model's logits (in the collaboration's order)."""
  if isinstance(collab, WeightedEnsemble):
    mixture = sum(w * member_probs(collab, k, x) for k, (w, x) in
                  enumerate(zip(collab.weights, logits, strict=True)))
    return probabilities(jnp.log(mixture), collab.sampling)
  if isinstance(collab, Contrastive):
    expert, amateur = (x.astype(jnp.float32) for x in logits)
    return probabilities(expert - collab.mu * amateur, collab.sampling)
  return probabilities(logits[0], collab.sampling)


def proposal_probs(collab: Collaboration, k: int, logits_BV: jnp.ndarray) -> jnp.ndarray:
  """What model k drafts from when it proposes."""
  if isinstance(collab, WeightedEnsemble):
    return probabilities(jnp.log(member_probs(collab, k, logits_BV)), collab.sampling)
  return probabilities(logits_BV, collab.sampling)
