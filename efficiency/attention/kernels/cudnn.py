"""cuDNN's fused flash attention through `jax.nn.dot_product_attention(implementation="cudnn")`.

Causality and the window go to cuDNN as flags (it skips the masked blocks); packed documents go
as a boolean [B, 1, T, T] mask, which cuDNN takes as an additive bias. Queries of padding
(segment 0) output 0, as in the reference.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from efficiency.attention.kernels.case import (
    AttentionCase,
    fused_kernel_limit,
    zero_padding_queries,
)


def unsupported(case: AttentionCase, platform: str) -> str | None:
  """cuDNN's flash kernel: NVIDIA GPUs, 16-bit inputs, equal head dims up to 128, no bias."""
  if platform != "gpu":
    return f"it needs an NVIDIA GPU (this is {platform})"
  if case.dtype not in ("bfloat16", "float16"):
    return f"cuDNN takes bfloat16 or float16 inputs, not model.dtype={case.dtype!r}"
  if case.head_dim % 8 or case.head_dim > 128:
    return f"head dim {case.head_dim} is not a multiple of 8 up to 128"
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
    implementation: str = "cudnn",
) -> jnp.ndarray:
  """[B, T, N, H]; `implementation="xla"` runs the same call without cuDNN (for tests)."""
  del positions_BT, bias, quant
  same_document_B1TS = (
      (segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :])
      & (segment_ids_BT != 0)[:, None, :]
  )[:, None]
  out_BTNH = jax.nn.dot_product_attention(
      q_BTNH, k_BTKH, v_BTKV, mask=same_document_B1TS, scale=scale, is_causal=True,
      local_window_size=None if window is None else (window - 1, 0),
      implementation=implementation,
  )
  return zero_padding_queries(out_BTNH, segment_ids_BT, v_BTKV.dtype)
