"""A projection with a frozen base kernel and low-rank adapters, computed in the forward pass.

PEFT training (efficiency.peft) puts into a Projection's params, in place of its `kernel`:
- the frozen base: `kernel` (float), `kernel_int8` with `kernel_scale` (kernel-shaped scales with
  size-1 contracted dims), or `kernel_int4` with `kernel_scale` (efficiency.quant.pack's packed
  nibbles [K // 2, M] and per-group scales [G, M]);
- `lora_a` [*batch, *contract, R] and `lora_b` [*batch, R, *out], B already times the method's
  scale; DoRA also `magnitude` [*batch, *out] (the kernel's dims less the contracted ones).

  y = x @ W + (x @ A) @ B                       (LoRA, LoRA+, RSLoRA, PiSSA: W is the residual)
  y = (x @ W + (x @ A) @ B) * m / ||W + A @ B||  (DoRA; the norm is per output channel)

W enters under stop_gradient, so no dL/dW is formed: the backward pass computes dL/dx through W
and the small adapter gradients only. A quantized base is dequantized inside a rematerialized
einsum, so no float copy of it is kept between the forward and the backward pass.
"""

import jax
import jax.numpy as jnp

from efficiency.quant.pack import dequantize_int4

RANK_LETTER = "R"  # einsum letter of the adapter rank; specs use lowercase letters
ADAPTER_LEAVES = ("lora_a", "lora_b", "magnitude")


def is_adapted(params: dict) -> bool:
  """Whether a Projection's params hold adapters."""
  return "lora_a" in params


def split_spec(spec: str) -> tuple[str, str, str, str, str, str]:
  """(inputs, kernel, outputs, batch, contract, out) letters of "inputs,kernel->outputs"."""
  inputs, rest = spec.split(",")
  kernel, outputs = rest.split("->")
  batch = "".join(c for c in kernel if c in inputs and c in outputs)
  contract = "".join(c for c in kernel if c in inputs and c not in outputs)
  out = "".join(c for c in kernel if c in outputs and c not in inputs)
  return inputs, kernel, outputs, batch, contract, out


def frozen_kernel(spec: str, params: dict, shape: tuple[int, ...], dtype) -> jax.Array:
  """The base kernel in `dtype`, from whichever storage `params` holds (no gradient)."""
  if "kernel" in params:
    kernel = params["kernel"].astype(dtype)
  elif "kernel_int8" in params:
    kernel = params["kernel_int8"].astype(dtype) * params["kernel_scale"].astype(dtype)
  else:
    kernel = dequantize_int4(params["kernel_int4"], params["kernel_scale"], spec, shape, dtype)
  return jax.lax.stop_gradient(kernel)


def base_output(spec: str, x: jax.Array, params: dict, shape: tuple[int, ...], einsum) -> jax.Array:
  """x @ W for the frozen W. A quantized W is dequantized inside a rematerialized function, so
  the backward pass recomputes it from the codes instead of saving it."""
  if "kernel" in params:
    return einsum(spec, x, frozen_kernel(spec, params, shape, x.dtype))
  codes = {k: v for k, v in params.items() if k in ("kernel_int8", "kernel_int4", "kernel_scale")}

  @jax.checkpoint
  def matmul(x, codes):
    return jnp.einsum(spec, x, frozen_kernel(spec, codes, shape, x.dtype))

  return matmul(x, codes)


def adapted(spec: str, x: jax.Array, params: dict, shape: tuple[int, ...], einsum) -> jax.Array:
  """The projection's output with its adapters (see the module docstring)."""
  inputs, kernel, outputs, batch, contract, out = split_spec(spec)
  r = RANK_LETTER
  a, b = params["lora_a"].astype(x.dtype), params["lora_b"].astype(x.dtype)
  low = "".join(c for c in outputs if c not in out) + r
  xa = jnp.einsum(f"{inputs},{batch}{contract}{r}->{low}", x, a)
  y = base_output(spec, x, params, shape, einsum) + jnp.einsum(
      f"{low},{batch}{r}{out}->{outputs}", xa, b
  )
  if "magnitude" not in params:
    return y
  kept = "".join(c for c in kernel if c not in contract)
  direction = frozen_kernel(spec, params, shape, jnp.float32) + jnp.einsum(
      f"{batch}{contract}{r},{batch}{r}{out}->{kernel}", a.astype(jnp.float32),
      b.astype(jnp.float32),
  )
  contract_axes = tuple(kernel.index(c) for c in contract)
  norm = jnp.sqrt(jnp.sum(direction * direction, axis=contract_axes))
  factor = (params["magnitude"].astype(jnp.float32) / norm).astype(y.dtype)
  return y * broadcast_to_output(factor, kept, outputs)


def broadcast_to_output(v: jax.Array, letters: str, outputs: str) -> jax.Array:
  """`v` (dims `letters`, all in `outputs`) permuted and expanded to broadcast against the
  projection's output (a multiply, where an einsum would be a batched dot)."""
  order = "".join(c for c in outputs if c in letters)
  v = jnp.transpose(v, [letters.index(c) for c in order])
  return v.reshape([v.shape[order.index(c)] if c in order else 1 for c in outputs])
