"""Registry of quantization modes, keyed by the name `quant.mode` uses.

A mode maps to a function returning the AQT (aqt.jax.v2) dot_general config its quantized
einsums use; `none` is plain float jnp.einsum.
"""

from collections.abc import Callable

from aqt.jax.v2.config import DotGeneral

from efficiency.quant import fp8, int4, int8, int8_fwd

QUANT_MODES: dict[str, Callable[[], DotGeneral] | None] = {
    "none": None,
    "int8": int8.aqt_config,
    "int8_fwd": int8_fwd.aqt_config,
    "int4": int4.aqt_config,
    "fp8": fp8.aqt_config,
}

# Backends on which a mode's AQT numerics run; modes not listed run everywhere.
MODE_BACKENDS: dict[str, tuple[str, ...]] = {"fp8": fp8.BACKENDS}
