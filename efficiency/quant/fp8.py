"""fp8: e4m3 forward matmuls, float backward (AQT's fp8 numerics)."""

from aqt.jax.v2 import config as aqt_config_lib

# Where aqtp's fp8 numerics are known to run (CPU emulates float8 in XLA).
BACKENDS = ("cpu", "gpu", "cuda")


def aqt_config() -> aqt_config_lib.DotGeneral:
  """float8 e4m3 forward (per-channel scales); gradients in float."""
  return aqt_config_lib.config_fwd_fp8("e4m3")
