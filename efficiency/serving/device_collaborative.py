"""Collaborative targets on device (JAX, float32): the same r and proposal distributions as
`collaborative` (the float64 reference), for `Single`, `WeightedEnsemble` and `Contrastive`."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from efficiency.serving.collaborative import Contrastive, Single, WeightedEnsemble
from efficiency.serving.device_sampling import probabilities

Collaboration = Single | WeightedEnsemble | Contrastive


def _member_probs(collab: WeightedEnsemble, k: int, logits_BV: jnp.ndarray) -> jnp.ndarray:
  tau = collab.temperatures[k] if collab.temperatures else 1.0
  return jax.nn.softmax(logits_BV.astype(jnp.float32) / tau, axis=-1)


def target_probs(collab: Collaboration, logits: Sequence[jnp.ndarray]) -> jnp.ndarray:
  """r [..., V] from each model's logits (in the collaboration's order)."""
  if isinstance(collab, WeightedEnsemble):
    mixture = sum(w * _member_probs(collab, k, x) for k, (w, x) in
                  enumerate(zip(collab.weights, logits, strict=True)))
    return probabilities(jnp.log(mixture), collab.sampling)
  if isinstance(collab, Contrastive):
    expert, amateur = (x.astype(jnp.float32) for x in logits)
    return probabilities(expert - collab.mu * amateur, collab.sampling)
  return probabilities(logits[0], collab.sampling)


def proposal_probs(collab: Collaboration, k: int, logits_BV: jnp.ndarray) -> jnp.ndarray:
  """What model k drafts from when it proposes."""
  if isinstance(collab, WeightedEnsemble):
    return probabilities(jnp.log(_member_probs(collab, k, logits_BV)), collab.sampling)
  return probabilities(logits_BV, collab.sampling)
