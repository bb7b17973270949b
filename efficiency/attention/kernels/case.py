"""What an attention call asks of a kernel: the facts each implementation's support depends on."""

import dataclasses

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class AttentionCase:
  """One training (self-)attention call: causal within packed documents, plus these options.

  `bias` is None, "fixed" (ALiBi: no parameters) or "learned" (T5 relative: a table with a
  gradient); `quantized` means the score and value products go through AQT (`quant.attention`).
  """

  seq_len: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  value_dim: int
  dtype: str
  window: int | None = None
  bias: str | None = None
  quantized: bool = False

  @classmethod
  def of(
      cls,
      q_BTNH: jnp.ndarray,
      k_BTKH: jnp.ndarray,
      v_BTKV: jnp.ndarray,
      window: int | None,
      bias: str | None,
      quantized: bool,
  ) -> "AttentionCase":
    """The case of a call with these arrays."""
    _, t, n, h = q_BTNH.shape
    return cls(
        t, n, k_BTKH.shape[2], h, v_BTKV.shape[3], jnp.dtype(q_BTNH.dtype).name, window, bias,
        quantized,
    )


QUANTIZED = "quant.attention (AQT score and value products) runs only in the xla implementation"


def fused_kernel_limit(case: AttentionCase, takes_window: bool) -> str | None:
  """Why a fused kernel (float products, no score bias, one head dim for q, k and v, a window
  only if `takes_window`) cannot run `case`; None if it can."""
  if case.window is not None and not takes_window:
    return "the kernel has no sliding window"
  if case.bias is not None:
    return f"the kernel takes no ({case.bias}) position bias"
  if case.head_dim != case.value_dim:
    return f"query/key head dim {case.head_dim} differs from value head dim {case.value_dim}"
  if case.quantized:
    return QUANTIZED
  return None


def zero_padding_queries(
    out_BTNV: jnp.ndarray, segment_ids_BT: jnp.ndarray, dtype: jnp.dtype
) -> jnp.ndarray:
  """The reference's output for queries of padding (segment 0): zeros. Fused kernels let
  padding attend to padding, so their output there is set after the call."""
  return jnp.where((segment_ids_BT != 0)[:, :, None, None], out_BTNV, 0).astype(dtype)
