"""Building blocks with logically partitioned parameters: projections, RMSNorm, embedding, MLP."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = jnp.dtype


class Projection(nn.Module):
  """An einsum against a kernel of explicit shape and logical axis names, with optional bias.

  `spec` is an einsum equation "inputs,kernel->outputs", for example "btd,dnh->btnh".
  """

  spec: str
  kernel_shape: Sequence[int]
  kernel_axes: Sequence[str]
  init_std: float
  use_bias: bool = False
  bias_axes: Sequence[str] = ()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    kernel = self.param(
        "kernel",
        nn.with_logical_partitioning(
            nn.initializers.normal(self.init_std), tuple(self.kernel_axes)
        ),
        tuple(self.kernel_shape),
        self.param_dtype,
    )
    y = jnp.einsum(self.spec, x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      n_out = len(self.bias_axes)
      bias = self.param(
          "bias",
          nn.with_logical_partitioning(nn.initializers.zeros, tuple(self.bias_axes)),
          tuple(self.kernel_shape[-n_out:]),
          self.param_dtype,
      )
      y = y + bias.astype(self.dtype)
    return y


class RMSNorm(nn.Module):
  """Root-mean-square norm with a learned scale, computed in float32."""

  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BTD: jnp.ndarray) -> jnp.ndarray:
    scale_D = self.param(
        "scale",
        nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        (x_BTD.shape[-1],),
        self.param_dtype,
    )
    x32 = x_BTD.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * scale_D.astype(jnp.float32)).astype(self.dtype)


class Embed(nn.Module):
  """Token embedding table [vocab, d_model]; `attend` gives the tied logits projection."""

  vocab_size: int
  d_model: int
  init_std: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    self.embedding = self.param(
        "embedding",
        nn.with_logical_partitioning(nn.initializers.normal(self.init_std), ("vocab", "embed")),
        (self.vocab_size, self.d_model),
        self.param_dtype,
    )

  def __call__(self, tokens_BT: jnp.ndarray) -> jnp.ndarray:
    return jnp.take(self.embedding, tokens_BT, axis=0).astype(self.dtype)

  def attend(self, x_BTD: jnp.ndarray) -> jnp.ndarray:
    return jnp.einsum("btd,vd->btv", x_BTD, self.embedding.astype(self.dtype))


class SwiGLU(nn.Module):
  """MLP: down(silu(x W_gate) * (x W_up))."""

  d_model: int
  d_ff: int
  init_std: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BTD: jnp.ndarray) -> jnp.ndarray:
    kw = dict(init_std=self.init_std, dtype=self.dtype, param_dtype=self.param_dtype)
    up = lambda name: Projection(
        "btd,df->btf", (self.d_model, self.d_ff), ("embed", "mlp"), name=name, **kw
    )
    h_BTF = nn.silu(up("gate")(x_BTD)) * up("up")(x_BTD)
    h_BTF = nn.with_logical_constraint(h_BTF, ("activation_batch", "activation_length", "mlp"))
    down = Projection(
        "btf,fd->btd", (self.d_ff, self.d_model), ("mlp", "embed"), name="down", **kw
    )
    return down(h_BTF)
