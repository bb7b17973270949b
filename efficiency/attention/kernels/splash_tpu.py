"""JAX's splash attention for TPUs (`jax.experimental.pallas.ops.tpu.splash_attention`).

One multi-query kernel per key/value head serves that head's group of queries; causality (or
the sliding window) is a lazily computed block-sparse mask, so masked blocks are skipped, and
documents are `SegmentIds`. Splash does not scale the scores, so the queries are scaled first.
Queries of padding (segment 0, which the kernel lets attend to other padding) output 0.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

from efficiency.attention.kernels.case import (
    AttentionCase,
    fused_kernel_limit,
    zero_padding_queries,
)

BLOCK = 512
LANES = 128


def unsupported(case: AttentionCase, platform: str) -> str | None:
  """Causal or sliding, with segment ids; no bias, equal head dims."""
  if platform != "tpu":
    return f"it needs a TPU (this is {platform}; tests run the kernel with interpret=True)"
  return fused_kernel_limit(case, takes_window=True)


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
  del positions_BT, bias, quant
  b, t, n, h = q_BTNH.shape
  k = k_BTKH.shape[2]
  g = n // k
  scale = h**-0.5 if scale is None else scale
  t_pad = -(-t // LANES) * LANES
  block = min(BLOCK, t_pad)
  t_pad = -(-t_pad // block) * block
  pad = ((0, 0), (0, t_pad - t))
  seg_BT = jnp.pad(segment_ids_BT, pad)
  q_BKGTH = jnp.pad(q_BTNH * scale, pad + ((0, 0), (0, 0))).reshape(b, t_pad, k, g, h)
  q_BKGTH = q_BKGTH.transpose(0, 2, 3, 1, 4)
  k_BKTH, v_BKTH = (jnp.pad(x, pad + ((0, 0), (0, 0))).transpose(0, 2, 1, 3)
                    for x in (k_BTKH, v_BTKV))
  shape = (t_pad, t_pad)
  head_mask = (masks.CausalMask(shape) if window is None
               else masks.LocalMask(shape, window_size=(window - 1, 0), offset=0))
  sizes = splash.BlockSizes(
      block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
      block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block,
  )
  kernel = splash.make_splash_mqa(
      masks.MultiHeadMask([head_mask] * g), block_sizes=sizes, head_shards=1, q_seq_shards=1,
      interpret=interpret,
  )

  def one_group(q_GTH, k_TH, v_TH, seg_T):
    return kernel(q_GTH, k_TH, v_TH, segment_ids=splash.SegmentIds(seg_T, seg_T))

  per_head = jax.vmap(one_group, in_axes=(0, 0, 0, None))  # over K
  out_BKGTH = jax.vmap(per_head)(q_BKGTH, k_BKTH, v_BKTH, seg_BT)
  out_BTNH = out_BKGTH.transpose(0, 3, 1, 2, 4).reshape(b, t_pad, n, h)[:, :t]
  return zero_padding_queries(out_BTNH, segment_ids_BT, v_BTKV.dtype)
