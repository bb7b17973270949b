"""JAX's Pallas (Triton) flash attention for GPUs, `jax.experimental.pallas.ops.gpu.attention`.

The kernel takes one segment id per token and equal query and key/value head counts: grouped
key/value heads are repeated (their gradients sum back), rows are padded to a whole number of
blocks with padding tokens, and queries of padding (segment 0, which the kernel lets attend to
other padding) output 0, as in the reference.
"""

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
from jax.experimental.pallas.ops.gpu import attention as pallas_attention

from efficiency.attention.kernels.case import (
    AttentionCase,
    fused_kernel_limit,
    zero_padding_queries,
)

BLOCK_Q = BLOCK_K = 128
BLOCK_BACKWARD = 32


def unsupported(case: AttentionCase, platform: str) -> str | None:
  """Causal with segment ids only: no window, no bias, equal head dims."""
  if platform != "gpu":
    return f"it needs a GPU (this is {platform}; tests run the kernel with interpret=True)"
  return fused_kernel_limit(case, takes_window=False)


def attend(
    q_BTNH: jnp.ndarray,
    k_BTKH: jnp.ndarray,
    v_BTKV: jnp.ndarray,
    segment_ids_BT: jnp.ndarray,
    positions_BT: jnp.ndarray,
    *,
    window: int | None = None,
    bias: nn.Module | None = None,
    scale: float | None = None,
    quant: ml_collections.ConfigDict | None = None,
    interpret: bool = False,
) -> jnp.ndarray:
  del positions_BT, window, bias, quant
  b, t, n, h = q_BTNH.shape
  g = n // k_BTKH.shape[2]
  scale = h**-0.5 if scale is None else scale
  block_q, block_k = min(BLOCK_Q, t), min(BLOCK_K, t)
  pad = -t % max(block_q, block_k)
  k_BTNH, v_BTNH = (jnp.repeat(x, g, axis=2) for x in (k_BTKH, v_BTKV))
  seg_BT = segment_ids_BT
  if pad:
    q_BTNH, k_BTNH, v_BTNH = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))
                              for x in (q_BTNH, k_BTNH, v_BTNH))
    seg_BT = jnp.pad(seg_BT, ((0, 0), (0, pad)))
  backward = min(BLOCK_BACKWARD, block_q)
  sizes = pallas_attention.BlockSizes(
      block_q=block_q, block_k=block_k, block_q_dkv=backward, block_kv_dkv=backward,
      block_q_dq=backward, block_kv_dq=backward,
  )
  out_BTNH = pallas_attention.mha(
      q_BTNH, k_BTNH, v_BTNH, seg_BT, sm_scale=scale, causal=True, block_sizes=sizes,
      interpret=interpret,
  )[:, :t]
  return zero_padding_queries(out_BTNH, segment_ids_BT, v_BTKV.dtype)
