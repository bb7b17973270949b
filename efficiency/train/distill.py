"""Knowledge distillation: a trained teacher's next-token distributions as a second target.

With `distill.teacher` (a train.py workdir), the objective per real target is
`(1 - weight) * cross_entropy + weight * temperature^2 * KL(teacher_T || student_T)`, where `_T`
is a softmax at `temperature` (Hinton et al., 2015). Training a speculative draft this way
raises how often it agrees with its target (DistillSpec, Zhou et al., 2023). The teacher runs
forward only, its parameters passed to the step as an argument (not baked in as constants) and
replicated over the mesh.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh, NamedSharding, PartitionSpec


@dataclasses.dataclass(frozen=True)
class Distillation:
  """The teacher model and how its distributions enter the objective."""

  model: nn.Module
  weight: float
  temperature: float


def distill_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict | None:
  """The config's `distill` section when it names a teacher, else None."""
  distill = config.get("distill")
  return distill if distill is not None and distill.get("teacher", "") else None


def kl_sum(
    logits_BTV: jax.Array, teacher_logits_BTV: jax.Array, weights_BT: jax.Array,
    temperature: float,
) -> jax.Array:
  """temperature^2 * KL(teacher || student) at `temperature`, summed over weighted positions
  (nats); the teacher's side carries no gradient."""
  teacher_BTV = jax.lax.stop_gradient(teacher_logits_BTV.astype(jnp.float32)) / temperature
  log_teacher_BTV = jax.nn.log_softmax(teacher_BTV)
  log_student_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32) / temperature)
  kl_BT = jnp.sum(jnp.exp(log_teacher_BTV) * (log_teacher_BTV - log_student_BTV), axis=-1)
  return temperature**2 * jnp.sum(kl_BT * weights_BT)


def place_teacher(params: dict, mesh: Mesh) -> dict:
  """The teacher's (host) parameters replicated on every device of `mesh`, built from each
  process's own copy (so it works across processes)."""
  sharding = NamedSharding(mesh, PartitionSpec())
  return jax.tree.map(
      lambda x: jax.make_array_from_callback(x.shape, sharding, lambda index: x[index]), params
  )
