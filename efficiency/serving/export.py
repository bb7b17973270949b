"""Converts a trained float model into a served int8 or int4 one (same Transformer class).

int8 runs AQT's CONVERT pass, which freezes every quantized kernel as int8 values with
per-channel scales under `.../aqt/` in the params tree; the served model (quant.serve=int8) reads
them in AQT's SERVE mode and quantizes activations on the fly. int4 is weight-only: kernels are
packed two values per byte (`kernel_int4`) with per-channel or per-group scales (`kernel_scale`)
and dequantized for a float matmul. Excluded layers, embeddings and norms keep float weights,
stored in `dtype`. The result applies as `model.apply({"params": params}, tokens, segment_ids,
positions)` with no extra collections or RNGs; its config's `quant` section says how its weights
are stored (`quant.serve`), and `make_model` builds it from that config like any other.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from efficiency.errors import ConfigError
from efficiency.model.transformer import make_model
from efficiency.workdir.restore import TrainedModel, restore

BITS = (8, 4)
DTYPES = ("bfloat16", "float16", "float32")


def serve_config(
    config: ml_collections.ConfigDict, bits: int, dtype: str, group_size: int, serve: str
) -> ml_collections.ConfigDict:
  """A copy of `config` whose model stores weights per `serve` and float parts in `dtype`."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.quant.update(mode="int8" if bits == 8 else "none", serve=serve, group_size=group_size)
  config.model.param_dtype = dtype
  return config


def _drop_float_kernels(tree: dict) -> dict:
  """Removes `kernel` wherever its layer now holds a quantized copy (`aqt` or `kernel_int4`)."""
  if not isinstance(tree, dict):
    return tree
  quantized = "aqt" in tree or "kernel_int4" in tree
  return {k: _drop_float_kernels(v) for k, v in tree.items() if not (quantized and k == "kernel")}


def _cast_floats(tree: dict, dtype: jnp.dtype) -> dict:
  """Float leaves to `dtype`, except AQT's frozen scales (kept as AQT wrote them)."""
  def cast(path, leaf):
    in_aqt = any(getattr(p, "key", None) == "aqt" for p in path)
    if jnp.issubdtype(leaf.dtype, jnp.floating) and not in_aqt:
      return leaf.astype(dtype)
    return leaf
  return jax.tree_util.tree_map_with_path(cast, tree)


def check_conversion(bits: int, dtype: str, group_size: int) -> None:
  """The conversion's settings: bits in BITS, dtype in DTYPES, group_size 0 or more."""
  if bits not in BITS:
    raise ConfigError(f"bits={bits!r} is invalid; valid choices: {list(BITS)}")
  if dtype not in DTYPES:
    raise ConfigError(f"dtype={dtype!r} is invalid; valid choices: {list(DTYPES)}")
  if group_size < 0:
    raise ConfigError(f"group_size={group_size} is invalid; 0 (per channel) or more")


def convert(
    trained: TrainedModel, bits: int, dtype: str = "bfloat16", group_size: int = 0
) -> TrainedModel:
  """The served model of `trained` at `bits` (8 or 4), float parts in `dtype`."""
  check_conversion(bits, dtype, group_size)
  base = trained.config
  if base.quant.get("serve", "none") != "none":
    raise ConfigError(f"the model is already converted (quant.serve={base.quant.serve!r})")
  serve = f"int{bits}"
  conv_config = serve_config(base, bits, dtype, group_size, f"{serve}_convert")
  conv_config.model.param_dtype = base.model.param_dtype
  converter = make_model(conv_config)
  tokens_BT = jnp.zeros((1, 8), jnp.int32)
  positions_BT = jnp.arange(8)[None]
  try:
    _, variables = jax.jit(
        lambda p: converter.apply(
            {"params": p}, tokens_BT, jnp.ones_like(tokens_BT), positions_BT, mutable=["params"]
        )
    )(trained.params)
  except ValueError as e:  # a group size that does not divide a contracted size
    raise ConfigError(str(e)) from None
  params = _cast_floats(_drop_float_kernels(variables["params"]), jnp.dtype(dtype))
  config = serve_config(base, bits, dtype, group_size, serve)
  return dataclasses.replace(trained, config=config, model=make_model(config), params=params)


def cast_float(trained: TrainedModel, dtype: str) -> TrainedModel:
  """The unquantized model with its weights stored in `dtype` (the study's bf16 baseline)."""
  config = ml_collections.ConfigDict(trained.config.to_dict())
  config.model.param_dtype = dtype
  params = _cast_floats(trained.params, jnp.dtype(dtype))
  return dataclasses.replace(trained, config=config, model=make_model(config), params=params)


def load_quantized(
    workdir: str, bits: int, dtype: str = "bfloat16", group_size: int = 0
) -> TrainedModel:
  """Restores `workdir`'s newest checkpoint and converts it to `bits` (the decoder's loader)."""
  return convert(restore(workdir), bits, dtype, group_size)


def weight_bytes(params: dict) -> int:
  """Bytes of every array in the params tree as stored."""
  return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(params))
