"""Registry of attention implementations, keyed by the name `model.attention_impl` uses.

Each implementation is a module with `attend(q_BTNH, k_BTKH, v_BTKV, segment_ids_BT,
positions_BT, *, window, bias, scale, quant) -> out_BTNV` (causal self-attention within packed
documents, the score bias given as the position encoding's bias module) and
`unsupported(case, platform) -> reason | None`. Adding one is a file and a line here.

`auto` takes the first implementation of the platform's preference list that supports the
case; on CPU and GPU the plain XLA form stays for short rows, where it is as fast. The platform
is the one being traced for (`efficiency.sharding.target`), not the host's. Fused kernels run
under `shard_map` over that mesh (`kernels.shard`), so each device gets whole rows and heads and
any case a kernel supports runs on any mesh.
"""

import functools
from types import ModuleType

import jax.numpy as jnp

from efficiency.attention.kernels import chunked, cudnn, pallas_gpu, splash_tpu, xla
from efficiency.attention.kernels.case import AttentionCase
from efficiency.attention.kernels.shard import on_mesh
from efficiency.errors import ConfigError
from efficiency.sharding.target import current_mesh

IMPLEMENTATIONS: dict[str, ModuleType] = {
    "xla": xla,
    "chunked": chunked,
    "cudnn": cudnn,
    "pallas_gpu": pallas_gpu,
    "splash_tpu": splash_tpu,
}
CHOICES = ("auto", *IMPLEMENTATIONS)
# Kernels that XLA cannot partition (Pallas) or partitions only in one layout (cuDNN): they run
# per device under `shard_map`.
SHARD_MAPPED = ("cudnn", "pallas_gpu", "splash_tpu")

# What `auto` tries, best first, per platform (`jax.default_backend()`).
PREFERENCE = {
    "gpu": ("cudnn", "pallas_gpu", "chunked", "xla"),
    "tpu": ("splash_tpu", "chunked", "xla"),
    "cpu": ("chunked", "xla"),
}
# Rows shorter than this keep the XLA form under `auto` (the blockwise loop only pays off when
# the [T, T] scores stop fitting in cache; BENCHMARKS.md, "Attention implementations").
CHUNKED_FROM_LEN = 512


def choose(name: str, case: AttentionCase, platform: str) -> str:
  """The implementation `model.attention_impl=name` runs for `case` on `platform`.

  A named implementation that cannot run the case is a ConfigError naming why and what can.
  """
  if name not in CHOICES:
    raise ConfigError(f"model.attention_impl={name!r} is unknown; valid choices: {list(CHOICES)}")
  if name != "auto":
    reason = IMPLEMENTATIONS[name].unsupported(case, platform)
    if reason:
      able = [n for n, impl in IMPLEMENTATIONS.items() if not impl.unsupported(case, platform)]
      raise ConfigError(
          f"model.attention_impl={name!r} cannot run this attention: {reason}; "
          f"valid here: {['auto', *able]}"
      )
    return name
  for candidate in PREFERENCE.get(platform, ("chunked", "xla")):
    if candidate == "chunked" and case.seq_len < CHUNKED_FROM_LEN:
      continue
    if not IMPLEMENTATIONS[candidate].unsupported(case, platform):
      return candidate
  return "xla"


def attend(
    name: str,
    q_BTNH: jnp.ndarray,
    k_BTKH: jnp.ndarray,
    v_BTKV: jnp.ndarray,
    segment_ids_BT: jnp.ndarray,
    positions_BT: jnp.ndarray,
    **options,
) -> jnp.ndarray:
  """Implementation `name`'s attention (options: window, bias, scale, quant), a fused kernel
  per device over the mesh being traced for: [B, T, N, V]."""
  call = functools.partial(IMPLEMENTATIONS[name].attend, **options)
  if name not in SHARD_MAPPED:
    return call(q_BTNH, k_BTKH, v_BTKV, segment_ids_BT, positions_BT)
  return on_mesh(call, current_mesh(), q_BTNH, k_BTKH, v_BTKV, segment_ids_BT, positions_BT)
