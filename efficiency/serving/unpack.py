"""The form a model decodes in: a packed int4 model unpacks its kernels once per request, inside
the jitted program and before the decode loop, to its float weight dtype, and the loop runs the
float model. Weights stay packed in storage and in transfer; each request makes one pass over
them instead of one per token. A packed int4 embedding table (`quant.embedding=int4`) unpacks
the same way, into a float table; an int8 table stays int8 in the loop (its lookup gathers
int8 rows, its logits are (x @ codes^T) * scale).

Why not unpack inside every step: XLA on CPU fuses the unpack into its matrix-vector loop, and
that decoded at 0.14x of bf16 (BENCHMARKS.md, Decoding); unpacked once, int4 decodes through
the same per-token path as bf16.
"""

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from efficiency.model.layers import Projection
from efficiency.quant import table
from efficiency.quant.pack import dequantize_int4


@functools.cache
def _int4_layers(model: nn.Module) -> dict[tuple[str, ...], tuple[str, tuple[int, ...]]]:
  """Every Projection's (spec, kernel shape) by module path, read off an abstract call."""
  layers = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, Projection) and context.method_name == "__call__":
      layers[tuple(context.module.path)] = (context.module.spec,
                                            tuple(context.module.kernel_shape))
    return next_fun(*args, **kwargs)

  tokens = jnp.zeros((1, 8), jnp.int32)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, tokens + 1, tokens))
  return layers


def _unpacked_model(model: nn.Module, kernels: bool, embedding: bool) -> nn.Module:
  """`model` reading float kernels (`kernels`) and a float embedding table (`embedding`)."""
  quant = dict(model.quant)
  if kernels:
    quant.update(serve="none", mode="none")
  if embedding:
    quant.update(embedding="none")
  return model.clone(quant=ml_collections.FrozenConfigDict(quant))


def _unpack_table(model: nn.Module, params: dict) -> dict:
  """The params with a packed int4 table {embedding_int4, embedding_scale} as a float table."""
  embed = dict(params["embed"])
  codes, scale_VG = embed.pop("embedding_int4"), embed.pop("embedding_scale")
  embed["embedding"] = table.dequantize(codes, scale_VG, 4, jnp.dtype(model.config.param_dtype))
  return {**params, "embed": embed}


def _unpack(model: nn.Module, params: dict) -> dict:
  """The float params of an int4 model: each {kernel_int4, kernel_scale} becomes a kernel in
  the model's param dtype (layers stacked by `scan_layers` unpack one by one)."""
  dtype = jnp.dtype(model.config.param_dtype)

  def walk(tree: dict, path: tuple[str, ...]) -> dict:
    out = {}
    for name, value in tree.items():
      if name == "kernel_int4":
        spec, shape = _int4_layers(model)[path]
        scale = tree["kernel_scale"]
        unpack = functools.partial(dequantize_int4, spec=spec, kernel_shape=shape, dtype=dtype)
        out["kernel"] = (jax.vmap(unpack)(value, scale) if value.ndim == 3
                         else unpack(value, scale))
      elif name != "kernel_scale":
        out[name] = walk(value, (*path, name)) if isinstance(value, dict) else value
    return out

  return walk(params, ())


def decode_form(model: nn.Module) -> tuple[nn.Module, Callable[[dict], dict]]:
  """The model the decode loop runs and how its params get there (traced under jit)."""
  if model.quant is None:
    return model, lambda params: params
  kernels = model.quant.get("serve", "none") == "int4"
  embedding = table.embedding_storage(model.quant) == "int4"

  def unpack(params: dict) -> dict:
    params = _unpack(model, params) if kernels else params
    return _unpack_table(model, params) if embedding else params

  return _unpacked_model(model, kernels, embedding), unpack
