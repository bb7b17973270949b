"""Converts a trained float model into a served int8 or int4 one (same Transformer class).

int8 runs AQT's CONVERT pass, which freezes every quantized kernel as int8 values with
per-channel scales under `.../aqt/` in the params tree; the served model (quant.serve=int8) reads
them in AQT's SERVE mode and quantizes activations on the fly. int4 kernels are packed two values
per byte (`kernel_int4`) with per-channel or per-group scales (`kernel_scale`) and dequantized
for a float matmul (weight-only), or, with `int4_activations=int8`, multiplied as int8 codes
with int8 activations (W4A8). With `embedding` int8 or int4 (`quant.embedding`) the token
embedding table is stored as per-row int8 or packed int4 codes with float32 scales
(efficiency.quant.table); it serves the lookup and the tied logits. An untied model's `unembed`
projection keeps float weights. Excluded layers, the float table, position tables and norms keep
float weights, stored in `dtype`. The result applies as
`model.apply({"params": params}, tokens, segment_ids, positions)` with no extra collections or
RNGs; its config's `quant` section says how its weights are stored (`quant.serve`,
`quant.embedding`), and `make_model` builds it from that config like any other.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from efficiency.errors import ConfigError
from efficiency.model.transformer import make_model
from efficiency.quant import table
from efficiency.quant.einsum import INT4_ACTIVATIONS
from efficiency.workdir.restore import TrainedModel, restore

BITS = (8, 4)
DTYPES = ("bfloat16", "float16", "float32")


def serve_config(
    config: ml_collections.ConfigDict, bits: int, dtype: str, group_size: int, serve: str,
    embedding: str = "none", int4_activations: str = "float",
) -> ml_collections.ConfigDict:
  """A copy of `config` whose model stores weights per `serve`, its embedding table per
  `embedding`, float parts in `dtype`, and (int4) runs on `int4_activations`."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.quant.update(mode="int8" if bits == 8 else "none", serve=serve, group_size=group_size,
                      embedding=embedding, int4_activations=int4_activations)
  config.model.param_dtype = dtype
  return config


def _drop_float_kernels(tree: dict) -> dict:
  """Removes `kernel` wherever its layer now holds a quantized copy (`aqt` or `kernel_int4`)."""
  if not isinstance(tree, dict):
    return tree
  quantized = "aqt" in tree or "kernel_int4" in tree
  return {k: _drop_float_kernels(v) for k, v in tree.items() if not (quantized and k == "kernel")}


def _cast_floats(tree: dict, dtype: jnp.dtype) -> dict:
  """Float leaves to `dtype`, except AQT's frozen scales (kept as AQT wrote them) and the
  embedding table's float32 scales."""
  def cast(path, leaf):
    keys = [getattr(p, "key", None) for p in path]
    kept = "aqt" in keys or keys[-1] == "embedding_scale"
    if jnp.issubdtype(leaf.dtype, jnp.floating) and not kept:
      return leaf.astype(dtype)
    return leaf
  return jax.tree_util.tree_map_with_path(cast, tree)


def check_conversion(
    bits: int, dtype: str, group_size: int, embedding: str = "none",
    int4_activations: str = "float",
) -> None:
  """The conversion's settings: bits in BITS, dtype in DTYPES, group_size 0 or more, embedding
  (the table's storage) in EMBEDDING_MODES, int4_activations in INT4_ACTIVATIONS (int8 only
  with int4 weights: int8 weights always run on int8 activations)."""
  if bits not in BITS:
    raise ConfigError(f"bits={bits!r} is invalid; valid choices: {list(BITS)}")
  if int4_activations not in INT4_ACTIVATIONS:
    raise ConfigError(f"int4_activations={int4_activations!r} is invalid; valid choices: "
                      f"{list(INT4_ACTIVATIONS)}")
  if int4_activations != "float" and bits != 4:
    raise ConfigError(f"int4_activations={int4_activations!r} needs bits=4, got bits={bits}")
  if dtype not in DTYPES:
    raise ConfigError(f"dtype={dtype!r} is invalid; valid choices: {list(DTYPES)}")
  if group_size < 0:
    raise ConfigError(f"group_size={group_size} is invalid; 0 (per channel) or more")
  table.check_mode("embedding", embedding)


def _quantize_table(params: dict, bits: int, group_size: int) -> dict:
  """`params` with embed/embedding replaced by its codes and float32 scales."""
  embed = dict(params["embed"])
  codes, scale_VG = table.quantize_table(embed.pop("embedding"), bits, group_size)
  embed[f"embedding_int{bits}"], embed["embedding_scale"] = codes, scale_VG
  return {**params, "embed": embed}


def convert(
    trained: TrainedModel, bits: int, dtype: str = "bfloat16", group_size: int = 0,
    embedding: str = "none", int4_activations: str = "float",
) -> TrainedModel:
  """The served model of `trained` at `bits` (8 or 4), its embedding table per `embedding`
  (none: float), float parts in `dtype`; int4 on `int4_activations` (float: weight-only; int8:
  W4A8, efficiency.quant.int8_activations)."""
  check_conversion(bits, dtype, group_size, embedding, int4_activations)
  base = trained.config
  if base.quant.get("serve", "none") != "none":
    raise ConfigError(f"the model is already converted (quant.serve={base.quant.serve!r})")
  table.check_table(base.model.d_model, group_size, embedding)
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
  params = _drop_float_kernels(variables["params"])
  if embedding != "none":
    params = _quantize_table(params, table.BITS[embedding], group_size)
  params = _cast_floats(params, jnp.dtype(dtype))
  config = serve_config(base, bits, dtype, group_size, serve, embedding, int4_activations)
  return dataclasses.replace(trained, config=config, model=make_model(config), params=params)


def cast_float(trained: TrainedModel, dtype: str) -> TrainedModel:
  """The unquantized model with its weights stored in `dtype` (the study's bf16 baseline)."""
  config = ml_collections.ConfigDict(trained.config.to_dict())
  config.model.param_dtype = dtype
  params = _cast_floats(trained.params, jnp.dtype(dtype))
  return dataclasses.replace(trained, config=config, model=make_model(config), params=params)


def load_quantized(
    workdir: str, bits: int, dtype: str = "bfloat16", group_size: int = 0,
    embedding: str = "none", int4_activations: str = "float",
) -> TrainedModel:
  """Restores `workdir`'s newest checkpoint and converts it to `bits`, its table per
  `embedding`, int4 on `int4_activations` (the decoder's loader)."""
  return convert(restore(workdir), bits, dtype, group_size, embedding, int4_activations)


def weight_bytes(params: dict) -> int:
  """Bytes of every array in the params tree as stored."""
  return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(params))
