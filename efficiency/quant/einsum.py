"""The einsum a layer runs under the `quant` config: float jnp.einsum or an AQT one.

A layer is named by its module path joined with "/" (for example `layers/attn/query`,
`layers/mlp/down`, `embed` for the tied logits). It is quantized when `quant.mode` (training)
or `quant.serve` (a converted model) is set, no `quant.exclude` glob matches its name, and, for
the logits projection, `quant.logits` is true. The attention score and value products (two
activations) are quantized when `quant.attention` is true, in the forward pass with the mode's
numerics; their gradients stay float (straight through).

`quant.serve` says how a converted model stores quantized weights: `int8` as AQT-frozen int8
values and scales in the params tree (`.../aqt/...`), `int4` as packed nibbles with scales (the
matmul runs in float, or, with `quant.int4_activations=int8`, on int8 activations against the
int4 codes: efficiency.quant.int8_activations). `int8_convert` and `int4_convert` are the passes
that read the float kernels and write those trees (see efficiency.serving.export).

On CPU a served int8 product of a single row (a batch-1 decode step) runs over that row twice
(`efficiency.backends.cpu.two_rows_on_cpu`, one of the XLA:CPU tweaks behind
`EFFICIENCY_CPU_TWEAKS`): XLA's CPU backend computes a one-row int8 product by converting the
whole int8 kernel to int32 in every call, and a product of two or more rows with YNNPACK's int8
kernel, which reads the kernel as stored (BENCHMARKS.md, "Served int8 on CPU").
"""

import fnmatch
from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
from aqt.jax.v2 import aqt_dot_general
from aqt.jax.v2 import config as aqt_config
from aqt.jax.v2.flax import aqt_flax

from efficiency.backends import cpu
from efficiency.quant import QUANT_MODES

Einsum = Callable[[str, jnp.ndarray, jnp.ndarray], jnp.ndarray]
SERVE_MODES = ("none", "int8", "int4", "int8_convert", "int4_convert")
INT4_ACTIVATIONS = ("float", "int8")  # the choices of `quant.int4_activations`


def layer_name(path: tuple[str, ...]) -> str:
  """The name exclusion patterns match: the module path joined with '/'."""
  return "/".join(path)


def is_excluded(quant: ml_collections.ConfigDict, path: tuple[str, ...]) -> bool:
  """Whether a `quant.exclude` glob (comma-separated) matches the layer's name."""
  patterns = [p.strip() for p in quant.get("exclude", "").split(",") if p.strip()]
  return any(fnmatch.fnmatchcase(layer_name(path), p) for p in patterns)


def is_quantized(
    quant: ml_collections.ConfigDict | None, path: tuple[str, ...], logits: bool = False
) -> bool:
  """Whether the layer at `path` runs quantized (a weight projection, or the logits)."""
  if quant is None or (quant.mode == "none" and quant.get("serve", "none") == "none"):
    return False
  if logits and not quant.get("logits", False):
    return False
  return not is_excluded(quant, path)


def weight_storage(
    quant: ml_collections.ConfigDict | None, path: tuple[str, ...], logits: bool = False
) -> str:
  """How the projection at `path` keeps its kernel: `float` or a `quant.serve` value. The
  logits projection keeps float weights (it is quantized, if at all, as in training)."""
  if logits or not is_quantized(quant, path) or quant.get("serve", "none") == "none":
    return "float"
  return quant.serve


def on_int8_activations(quant: ml_collections.ConfigDict | None) -> bool:
  """Whether a served model's quantized products run on int8 activations: served int8 (AQT),
  or served int4 with `quant.int4_activations=int8`."""
  serve = "none" if quant is None else quant.get("serve", "none")
  return serve == "int8" or (serve == "int4" and quant.get("int4_activations", "float") == "int8")


def make_einsum(
    module: nn.Module, quant: ml_collections.ConfigDict | None, logits: bool = False
) -> Einsum:
  """The einsum for `module` (call inside its compact method): `jnp.einsum` when the layer
  stays in float or holds int4 weights, else an AqtEinsum child named `aqt`.

  Training draws stochastic-rounding noise from the `quant` RNG stream when one is passed.
  """
  if not is_quantized(quant, module.path, logits):
    return jnp.einsum
  storage = weight_storage(quant, module.path, logits)
  if storage in ("int4", "int4_convert"):
    return jnp.einsum
  mode = quant.mode if quant.mode != "none" else "int8"
  cfg = QUANT_MODES[mode]()
  if storage in ("int8_convert", "int8"):
    einsum = aqt_flax.AqtEinsum(
        cfg, prng_name=None,
        rhs_quant_mode=aqt_flax.QuantMode.CONVERT if storage == "int8_convert"
        else aqt_flax.QuantMode.SERVE,
        rhs_freeze_mode=aqt_flax.FreezerMode.CALIBRATION_AND_VALUE,
        quant_collection="params", name="aqt",
    )
    return cpu.two_rows_on_cpu(einsum) if storage == "int8" else einsum
  prng_name = "quant" if module.has_rng("quant") else None
  return aqt_flax.AqtEinsum(cfg, prng_name=prng_name, name="aqt")


def int32_einsum(spec: str, x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  """An einsum of integer operands (int8 codes) summed and returned in int32."""
  return jnp.einsum(spec, x, kernel, preferred_element_type=jnp.int32)


def quantizes_attention(quant: ml_collections.ConfigDict | None) -> bool:
  """Whether the attention score and value products run through AQT (`quant.attention`)."""
  return quant is not None and quant.mode != "none" and bool(quant.get("attention", False))


def attention_einsum(quant: ml_collections.ConfigDict | None) -> Einsum:
  """The einsum of the attention score and value products: float unless `quant.attention`."""
  if not quantizes_attention(quant):
    return jnp.einsum
  cfg = QUANT_MODES[quant.mode]()
  float_grads = aqt_config.default_unquantized_config()
  cfg.dlhs, cfg.drhs = float_grads.dlhs, float_grads.drhs
  return lambda eqn, lhs, rhs: aqt_dot_general.einsum(eqn, lhs, rhs, dg=cfg)
