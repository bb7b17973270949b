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
and the small adapter gradients only. With a plain einsum the base and adapter products are one
matmul each way (`fused_matmul`); a rank-r product of its own costs a pass over the [tokens, out]
output, which on CPU took as long as the FLOPs saved. A quantized base is dequantized again in
the backward pass, so no float copy of it is kept between the passes. DoRA's norm is computed
from r x out products, never forming W + A @ B.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from efficiency.quant.pack import dequantize_int4

RANK_LETTER = "R"  # einsum letter of the adapter rank; specs use lowercase letters
SECOND_RANK_LETTER = "Q"
ADAPTER_LEAVES = ("lora_a", "lora_b", "magnitude")


def is_adapted(params: dict) -> bool:
  """Whether a Projection's params hold adapters."""
  return "lora_a" in params


def holds_codes(params: dict) -> bool:
  """Whether a Projection's params hold a PEFT base kernel as int8 or int4 codes (the layers of
  a frozen prefix below the adapted ones hold it without adapters)."""
  return "kernel_int8" in params or "kernel_int4" in params


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
  codes = base_storage(params)

  @jax.checkpoint
  def matmul(x, codes):
    return jnp.einsum(spec, x, frozen_kernel(spec, codes, shape, x.dtype))

  return matmul(x, codes)


def adapted(spec: str, x: jax.Array, params: dict, shape: tuple[int, ...], einsum) -> jax.Array:
  """The projection's output with its adapters (see the module docstring); without adapters
  (a frozen layer) the base product alone."""
  if not is_adapted(params):
    return base_output(spec, x, params, shape, einsum)
  inputs, kernel, outputs, batch, contract, out = split_spec(spec)
  r = RANK_LETTER
  a, b = params["lora_a"].astype(x.dtype), params["lora_b"].astype(x.dtype)
  if einsum is jnp.einsum:
    y = fused_output(spec, x, base_storage(params), a, b, shape)
  else:  # an AQT einsum quantizes the base product: the adapter product stays its own
    low = "".join(c for c in outputs if c not in out) + r
    xa = jnp.einsum(f"{inputs},{batch}{contract}{r}->{low}", x, a)
    y = base_output(spec, x, params, shape, einsum) + jnp.einsum(
        f"{low},{batch}{r}{out}->{outputs}", xa, b
    )
  if "magnitude" not in params:
    return y
  kept = "".join(c for c in kernel if c not in contract)
  norm = direction_norm(spec, a.astype(jnp.float32), b.astype(jnp.float32), base_storage(params),
                        shape)
  factor = (params["magnitude"].astype(jnp.float32) / norm).astype(y.dtype)
  return y * broadcast_to_output(factor, kept, outputs)


def base_storage(params: dict) -> dict:
  """The params that hold the frozen base kernel."""
  return {k: v for k, v in params.items() if k in ("kernel", "kernel_int8", "kernel_int4",
                                                      "kernel_scale")}


@functools.partial(jax.checkpoint, static_argnums=(0, 4))
def direction_norm(spec: str, a: jax.Array, b: jax.Array, base: dict,
                   shape: tuple[int, ...]) -> jax.Array:
  """||W + A @ B|| over the contracted dims, per output channel (dims: the kernel's less the
  contracted ones), without forming W + A @ B:

    ||W||^2 + 2 sum_r B_r (A^T W)_r + sum_rq B_r (A^T A)_rq B_q.

  Rematerialized: the backward pass recomputes these small products instead of keeping a
  quantized base's float copy."""
  _, kernel, _, batch, contract, out = split_spec(spec)
  r, q = RANK_LETTER, SECOND_RANK_LETTER
  kept = "".join(c for c in kernel if c not in contract)
  w = frozen_kernel(spec, base, shape, jnp.float32)
  w2 = jnp.einsum(f"{kernel},{kernel}->{kept}", w, w)
  a_w = jnp.einsum(f"{batch}{contract}{r},{kernel}->{batch}{r}{out}", a, w)
  a_a = jnp.einsum(f"{batch}{contract}{r},{batch}{contract}{q}->{batch}{r}{q}", a, a)
  cross = jnp.einsum(f"{batch}{r}{out},{batch}{r}{out}->{kept}", b, a_w)
  square = jnp.einsum(f"{batch}{r}{out},{batch}{r}{q},{batch}{q}{out}->{kept}", b, a_a, b)
  return jnp.sqrt(w2 + 2.0 * cross + square)


def fused_output(spec: str, x: jax.Array, base: dict, a: jax.Array, b: jax.Array,
                 shape: tuple[int, ...]) -> jax.Array:
  """x @ W + (x @ A) @ B through `fused_matmul`, the spec's dims moved into matrix form."""
  inputs, kernel, outputs, batch, contract, out = split_spec(spec)
  tokens = "".join(c for c in inputs if c not in kernel)
  size = dict(zip(inputs, x.shape, strict=True)) | dict(zip(kernel, shape, strict=True))
  sizes = lambda letters: tuple(size[c] for c in letters)
  prod = lambda letters: math.prod(sizes(letters))
  lead = sizes(batch)
  x_mat = jnp.einsum(f"{inputs}->{batch}{tokens}{contract}", x).reshape(
      *lead, prod(tokens), prod(contract))
  y_mat = fused_matmul(
      (spec, shape, jnp.dtype(x.dtype).name), x_mat, base,
      a.reshape(*lead, prod(contract), -1), b.reshape(*lead, b.shape[len(lead)], prod(out)),
  )
  y = y_mat.reshape(*lead, *sizes(tokens), *sizes(out))
  return jnp.einsum(f"{batch}{tokens}{out}->{outputs}", y)


def kernel_matrix(key: tuple, base: dict) -> jax.Array:
  """The frozen base kernel [*batch, K, M] in the compute dtype, `key` = (spec, shape, dtype)."""
  spec, shape, dtype = key
  _, kernel, _, batch, contract, out = split_spec(spec)
  size = dict(zip(kernel, shape, strict=True))
  w = jnp.einsum(f"{kernel}->{batch}{contract}{out}", frozen_kernel(spec, base, shape, dtype))
  return w.reshape(*(size[c] for c in batch), math.prod(size[c] for c in contract), -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def fused_matmul(key: tuple, x: jax.Array, base: dict, a: jax.Array, b: jax.Array) -> jax.Array:
  """[x, x @ A] @ [W; B]: the base and adapter products as one matmul ([*batch, T, K] inputs,
  W [*batch, K, M] from `base`, A [*batch, K, R], B [*batch, R, M]).

  Its backward pass is written out: dL/dx = [g, g B^T] @ [W^T; A^T], again one matmul, and the
  thin dL/dA = x^T (g B^T) and dL/dB = (x A)^T g. No dL/dW is formed, and only the base's
  storage is kept for the backward pass (a quantized W is dequantized again there)."""
  return _fused_forward(key, x, base, a, b)[0]


def _fused_forward(key, x, base, a, b):
  xa = x @ a
  w = kernel_matrix(key, base)
  y = jnp.concatenate([x, xa], -1) @ jnp.concatenate([w, b], -2)
  return y, (x, xa, base, a, b)


def _fused_backward(key, residuals, g):
  x, xa, base, a, b = residuals
  w = kernel_matrix(key, base)
  t = lambda m: jnp.swapaxes(m, -1, -2)
  g_xa = g @ t(b)
  g_x = jnp.concatenate([g, g_xa], -1) @ jnp.concatenate([t(w), t(a)], -2)
  no_gradient = jax.tree.map(
      lambda v: jnp.zeros_like(v) if jnp.issubdtype(v.dtype, jnp.inexact)
      else np.zeros(v.shape, jax.dtypes.float0), base)
  return g_x, no_gradient, t(x) @ g_xa, t(xa) @ g


fused_matmul.defvjp(_fused_forward, _fused_backward)


def broadcast_to_output(v: jax.Array, letters: str, outputs: str) -> jax.Array:
  """`v` (dims `letters`, all in `outputs`) permuted and expanded to broadcast against the
  projection's output (a multiply, where an einsum would be a batched dot)."""
  order = "".join(c for c in outputs if c in letters)
  v = jnp.transpose(v, [letters.index(c) for c in order])
  return v.reshape([v.shape[order.index(c)] if c in order else 1 for c in outputs])
