"""int4: 4-bit forward matmuls, int8 backward with stochastic rounding (AQT)."""

from aqt.jax.v2 import config as aqt_config_lib


def aqt_config() -> aqt_config_lib.DotGeneral:
  """4-bit forward, 8-bit backward; the backward pass draws from the `quant` RNG stream."""
  return aqt_config_lib.fully_quantized(fwd_bits=4, bwd_bits=8)
