"""A frozen base kernel stored as packed int4 with per-group scales (QLoRA's base), in the
serving int4 layout of efficiency.quant.pack: per layer, uint8 [K // 2, M] and scales [G, M]."""

import jax
import jax.numpy as jnp

from efficiency.errors import ConfigError
from efficiency.peft.targets import KernelLayout
from efficiency.quant.pack import dequantize_int4, matrix_shape, quantize_int4


def check(name: str, layout: KernelLayout, group_size: int) -> None:
  """One ConfigError line if the kernel at `name` cannot be packed with `group_size`."""
  k, _ = matrix_shape(layout.spec, layout.shape[layout.stack_dims:])
  if k % 2 or (group_size > 0 and k % group_size):
    raise ConfigError(
        f"peft.base_group_size={group_size} does not fit {name}'s contracted size {k}: it must "
        f"divide {k} (0 = one scale per output channel; int4 packing needs an even size)"
    )


def _over_stack(fn, layout: KernelLayout):
  for _ in range(layout.stack_dims):
    fn = jax.vmap(fn)
  return fn


def quantize(layout: KernelLayout, kernel: jax.Array, group_size: int):
  """Packed codes [*stack, K // 2, M] and float32 scales [*stack, G, M] of a stacked kernel."""
  return _over_stack(lambda w: quantize_int4(w, layout.spec, group_size), layout)(kernel)


def dequantize(layout: KernelLayout, packed: jax.Array, scale: jax.Array, dtype) -> jax.Array:
  """The stacked kernel in `dtype`."""
  shape = layout.shape[layout.stack_dims:]
  fn = lambda p, s: dequantize_int4(p, s, layout.spec, shape, dtype)
  return _over_stack(fn, layout)(packed, scale.astype(jnp.float32))
