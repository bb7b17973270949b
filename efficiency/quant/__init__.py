"""Registry of quantization modes, keyed by the name `quant.mode` uses.

A mode maps to the einsum implementation its projections use; `none` is plain float jnp.einsum.
"""

QUANT_MODES: dict[str, None] = {
    "none": None,
}
