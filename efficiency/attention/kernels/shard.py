"""Fused kernels on a mesh: each device runs the kernel on its own rows (and heads).

Pallas kernels do not partition themselves (a TPU Mosaic call on sharded arrays does not
compile; a GPU Triton call gets its inputs all-gathered), and cuDNN's partitioner wants query,
key and value sharded alike. So a fused kernel runs under `jax.shard_map` over the mesh being
traced for: rows split over the batch axes (data, fsdp, expert) when they divide the batch,
query and key/value heads over `tensor` when it divides the key/value heads. When `tensor` does
not divide them, every tensor shard runs all heads (the heads are gathered over `tensor`, the
kernel's work is repeated there, and the result is correct). Decoding's cached attention uses
no fused kernel (plain XLA einsums over the cache), so XLA partitions it like any other op.
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from efficiency.sharding.mesh import BATCH_AXES

Attend = Callable[..., jnp.ndarray]


def layout(mesh: Mesh, batch: int, kv_heads: int) -> tuple[tuple[str, ...], str | None]:
  """The mesh axes the rows are split over and the axis the heads are split over (or None)."""
  rows = tuple(a for a in BATCH_AXES if mesh.shape.get(a, 1) > 1)
  if batch % math.prod(mesh.shape[a] for a in rows):
    rows = ()  # e.g. one decoding row: every device runs it
  tensor = mesh.shape.get("tensor", 1)
  heads = "tensor" if tensor > 1 and kv_heads % tensor == 0 else None
  return rows, heads


def on_mesh(
    attend: Attend,
    mesh: Mesh | None,
    q_BTNH: jnp.ndarray,
    k_BTKH: jnp.ndarray,
    v_BTKV: jnp.ndarray,
    segment_ids_BT: jnp.ndarray,
    positions_BT: jnp.ndarray,
) -> jnp.ndarray:
  """`attend(q, k, v, segment_ids, positions)` per device under `shard_map` over `mesh` (called
  directly without a mesh or on one device): [B, T, N, V]."""
  if mesh is None or mesh.size == 1:
    return attend(q_BTNH, k_BTKH, v_BTKV, segment_ids_BT, positions_BT)
  rows, heads = layout(mesh, q_BTNH.shape[0], k_BTKH.shape[2])
  rows_spec = rows or None
  heads_BTNH = PartitionSpec(rows_spec, None, heads, None)
  rows_BT = PartitionSpec(rows_spec, None)
  return jax.shard_map(
      attend, mesh=mesh, in_specs=(heads_BTNH, heads_BTNH, heads_BTNH, rows_BT, rows_BT),
      out_specs=heads_BTNH, check_vma=False,
  )(q_BTNH, k_BTKH, v_BTKV, segment_ids_BT, positions_BT)
