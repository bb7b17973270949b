"""XLA:CPU workarounds, in one place behind one switch.

Each tweak is one function here, named with the BENCHMARKS.md row that pays for it. All of them
are on by default; `EFFICIENCY_CPU_TWEAKS=0` in the environment turns every one off, so the
plain-XLA reference of any program is one variable away. The switch is read when a function is
traced, so set it before a program is first traced (jax reuses a traced program). With the
switch off each function computes the same values the plain XLA way.
"""

import contextlib
import math
import os
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp

SWITCH = "EFFICIENCY_CPU_TWEAKS"
Einsum = Callable[[str, jnp.ndarray, jnp.ndarray], jnp.ndarray]
# A cached call with at most this many queries per KV head (T x group; decode steps) computes its
# score and value products over a heads-major cache as fused multiply-reduce loops, not as dots.
REDUCE_QUERIES = 8


def enabled() -> bool:
  """Whether the tweaks apply (`EFFICIENCY_CPU_TWEAKS` unset or not 0)."""
  return os.environ.get(SWITCH, "1") != "0"


@contextlib.contextmanager
def switched(on: bool) -> Iterator[None]:
  """Traces inside run with the tweaks on or off (for A/B arms compiled in one process)."""
  before = os.environ.get(SWITCH)
  os.environ[SWITCH] = "1" if on else "0"
  try:
    yield
  finally:
    if before is None:
      del os.environ[SWITCH]
    else:
      os.environ[SWITCH] = before


def tokens_merged(spec: str) -> str | None:
  """`spec` with the batch and length axes ("bt") of input and output merged into one ("t"), or
  None where they are not both leading or the kernel has them."""
  lhs, rest = spec.split(",")
  rhs, out = rest.split("->")
  if not (lhs.startswith("bt") and out.startswith("bt")) or {"b", "t"} & set(rhs):
    return None
  return f"{lhs[1:]},{rhs}->{out[1:]}"


def on_merged_tokens(spec: str, x: jnp.ndarray, fn: Callable[[str, jnp.ndarray], jnp.ndarray]):
  """fn(spec, x), computed over one token axis where `tokens_merged` allows.

  A kernel's gradient contracts over every token; with two such axes XLA's CPU backend takes
  about twice as long over it as over one (BENCHMARKS.md, "Our train step against PyTorch").
  """
  flat = tokens_merged(spec) if enabled() else None
  if flat is None:
    return fn(spec, x)
  b, t = x.shape[:2]
  y = fn(flat, x.reshape(b * t, *x.shape[2:]))
  return y.reshape(b, t, *y.shape[1:])


def contraction_merged(spec: str) -> str | None:
  """`spec` with its contracted axes merged into one ("Z"), or None where there are fewer than
  two or they are not the input's trailing and the kernel's leading axes, in one order."""
  lhs, rest = spec.split(",")
  rhs, out = rest.split("->")
  contracted = "".join(a for a in lhs if a in rhs and a not in out)
  if len(contracted) < 2 or not (lhs.endswith(contracted) and rhs.startswith(contracted)):
    return None
  return f"{lhs[: -len(contracted)]}Z,Z{rhs[len(contracted):]}->{out}"


def merged_contraction_einsum(spec: str, x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  """jnp.einsum(spec, x, kernel) over one contracted axis where `contraction_merged` allows.

  Given the attention output projection "tnh,nhd->td" as is, XLA's CPU backend transposed the
  [N, H, D] kernel in every decode step, a copy of the whole kernel per layer and token that took
  a sixth of a batch-1 decode step (BENCHMARKS.md, Decoding); over "tZ,Zd->td" it reads the
  kernel as stored. Training steps are unchanged (same speed within noise).
  """
  flat = contraction_merged(spec) if enabled() else None
  if flat is None:
    return jnp.einsum(spec, x, kernel)
  n = len(spec.split(",")[0]) - len(flat.split(",")[0]) + 1  # the axes merged into "Z"
  k = math.prod(kernel.shape[:n])
  x = x.reshape(*x.shape[: x.ndim - n], k)
  return jnp.einsum(flat, x, kernel.reshape(k, *kernel.shape[n:]))


def two_rows_on_cpu(einsum: Einsum) -> Einsum:
  """`einsum` where, on CPU, an input of one row over a leading token axis ("t...", as layers
  call it after merging batch and length) is computed as that row twice and the first result
  kept. Each row is quantized on its own (per-row scales), so the kept row is the same
  computation; only the kernel XLA picks changes: one int8 row runs through an int32 copy of
  the whole kernel, two rows through YNNPACK's int8 kernel (BENCHMARKS.md, "Served int8 on
  CPU")."""

  def run(spec: str, x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    if (not enabled() or jax.default_backend() != "cpu" or not spec.startswith("t")
        or x.shape[0] != 1):
      return einsum(spec, x, kernel)
    return einsum(spec, jnp.concatenate([x, x]), kernel)[:1]

  return run


def argmax(x_BV: jnp.ndarray) -> jnp.ndarray:
  """jnp.argmax over the last axis (the first index of the maximum, or of the first NaN), int32,
  as two plain reductions: the maximum, then the least index holding it. XLA's CPU backend runs
  jnp.argmax's (value, index) reduction as a scalar loop: over a [8, 4096] row block it took
  250 us, these two reductions 44 us, and at one row 39 us against 4 us, a third of a batch-1
  decode step of the default model (BENCHMARKS.md, Decoding)."""
  if not enabled():
    return jnp.argmax(x_BV, axis=-1).astype(jnp.int32)
  max_B1 = jnp.max(x_BV, axis=-1, keepdims=True)
  index_BV = jax.lax.broadcasted_iota(jnp.int32, x_BV.shape, x_BV.ndim - 1)
  hit_BV = (x_BV == max_B1) | jnp.isnan(x_BV)
  return jnp.min(jnp.where(hit_BV, index_BV, x_BV.shape[-1]), axis=-1)


def reduce_queries(queries: int) -> bool:
  """Whether a cached call with `queries` queries per KV head multiply-reduces over the
  heads-major cache instead of running dots (BENCHMARKS.md, "Decode steps that read weights and
  caches as stored")."""
  return enabled() and queries <= REDUCE_QUERIES


def int4_decode_form(backend: str) -> str:
  """The `auto` decode form of packed int4 kernels: `float` (unpacked once to the float dtype)
  on CPU, where per-step dequantization cost more than it saved (s4 at 0.63x-0.88x of bf16,
  float at 0.97x-1.04x: BENCHMARKS.md, Decoding), else `s4`."""
  return "float" if enabled() and backend == "cpu" else "s4"
