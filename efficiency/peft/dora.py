"""DoRA: weight-decomposed LoRA. The kernel is m * V / ||V||, V = W + scale * A @ B; the magnitude m
(one per output channel) and the direction V train separately. At init m = ||W||, so W is exact."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from efficiency.peft.method import Adapter
from efficiency.peft.targets import KernelLayout


def column_norm(layout: KernelLayout, kernel: jax.Array) -> jax.Array:
  """||kernel|| over the input dims, per output channel (input dims kept as size 1)."""
  k32 = kernel.astype(jnp.float32)
  return jnp.sqrt(jnp.sum(k32 * k32, axis=layout.contract_axes, keepdims=True))


class DoRA(Adapter):
  """LoRA on the direction plus a trainable magnitude vector."""

  def init_adapter(self, layout, kernel, rng):
    adapter, kept = super().init_adapter(layout, kernel, rng)
    names = tuple(n for i, n in enumerate(layout.names) if i not in layout.contract_axes)
    magnitude = jnp.squeeze(column_norm(layout, kernel), layout.contract_axes)
    adapter["magnitude"] = nn.Partitioned(magnitude.astype(kernel.dtype), names)
    return adapter, kept

  def effective(self, layout, kernel, adapter):
    direction = super().effective(layout, kernel, adapter)
    magnitude = jnp.expand_dims(adapter["magnitude"], layout.contract_axes)
    norm = column_norm(layout, direction)
    return (direction.astype(jnp.float32) * (magnitude / norm)).astype(kernel.dtype)
