"""PiSSA: LoRA initialised from the top-r singular vectors of W; the residual W - U_r S_r V_r^T is
the frozen base. A = U_r sqrt(S_r), B = sqrt(S_r) V_r^T, each divided by sqrt(scale), so the
model starts exactly at W and trains the principal part."""

import flax.linen as nn
import jax.numpy as jnp

from efficiency.errors import ConfigError
from efficiency.peft.method import Adapter


class PiSSA(Adapter):
  """Principal singular values and vectors adaptation."""

  def init_adapter(self, layout, kernel, rng):
    del rng  # deterministic: the SVD of W
    r = self.cfg.rank
    u, s, vt = jnp.linalg.svd(layout.matrices(kernel).astype(jnp.float32), full_matrices=False)
    root = jnp.sqrt(s[..., :r] / self.scale)
    a = u[..., :, :r] * root[..., None, :]
    b = root[..., :, None] * vt[..., :r, :]
    a_shape, a_names = layout.dims(layout.batch + layout.contract)
    b_shape, b_names = layout.dims(layout.batch)
    out_shape, out_names = layout.dims(layout.out)
    a = a.reshape(*a_shape, r).astype(kernel.dtype)
    b = b.reshape(*b_shape, r, *out_shape).astype(kernel.dtype)
    residual = kernel - (self.scale * layout.product(a, b)).astype(kernel.dtype)
    adapter = {
        "lora_a": nn.Partitioned(a, (*a_names, None)),
        "lora_b": nn.Partitioned(b, (*b_names, None, *out_names)),
    }
    return adapter, residual

  def __init__(self, cfg, boxed_base, specs):
    super().__init__(cfg, boxed_base, specs)
    for path, layout in self.layouts.items():
      smallest = min(layout.in_features, layout.matrices_shape[-1])
      if cfg.rank > smallest:
        raise ConfigError(
            f"peft.rank={cfg.rank} exceeds {'/'.join(path)}'s smallest matrix side {smallest}; "
            f"use at most {smallest} or narrow peft.targets"
        )
