"""int8_fwd: int8 forward matmuls, float backward (AQT)."""

from aqt.jax.v2 import config as aqt_config_lib


def aqt_config() -> aqt_config_lib.DotGeneral:
  """8-bit forward; gradients are computed in float (straight-through the quantizer)."""
  return aqt_config_lib.fully_quantized(fwd_bits=8, bwd_bits=None, use_stochastic_rounding=False)
