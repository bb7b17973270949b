"""int8: forward and backward matmuls in int8, stochastic rounding of gradients (AQT)."""

from aqt.jax.v2 import config as aqt_config_lib


def aqt_config() -> aqt_config_lib.DotGeneral:
  """8-bit forward, 8-bit backward; the backward pass draws from the `quant` RNG stream."""
  return aqt_config_lib.fully_quantized(fwd_bits=8, bwd_bits=8)
