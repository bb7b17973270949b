"""The form a model decodes in, made once when the served model is loaded (`to_decode_form`):
requests only read it, so no compiled request holds a second copy of the weights.

Layers: a model whose layers are one `nn.scan` (`scan_layers`, the training layout) decodes
layer by layer: its stacked params split once, into `layers_0`..`layers_{L-1}`, and its cache
is one buffer per layer. Inside the scan every decode
step sliced each layer's kernels out of the stacked arrays (a copy per kernel per call on CPU,
the largest single cost of a decode step) and wrote the stacked cache through the scan's
outputs; unrolled, the slices are gone and each layer's cache updates in place (BENCHMARKS.md,
"Decode steps that read weights and caches as stored"). The math is the same.

Weights: a packed int4 model (two values per uint8) takes one of two forms
once, before any request (`quant.int4_decode`):
- `s4`: its kernels become XLA's 4-bit integer type, `jnp.int4`, and every step dequantizes
  them (`codes.astype(dtype) * scale`) into its matmuls, so the loop reads 4-bit weights: the
  form for devices where decoding is bound by weight bandwidth (GPU, TPU).
- `float`: its kernels unpack to the float weight dtype and the loop runs the float model,
  whose per-step work is bf16's: the form for CPU, where decode steps of these sizes are not
  bandwidth-bound and the per-step dequantization costs more than it saves.
`auto` (the default) is `float` on CPU and `s4` elsewhere. A packed int4 embedding table
(`quant.embedding=int4`) unpacks once into a float table; an int8 table stays int8
in the loop (its lookup gathers int8 rows, its logits are (x @ codes^T) * scale).

A packed int4 model served on int8 activations (`quant.int4_activations=int8`, W4A8) takes a
third form whatever `quant.int4_decode` says: its kernels unpack once into int8
values of their codes (`kernel_s8`), which every step multiplies with int8 activations in int32
(efficiency.quant.int8_activations), as a model served int8 does; an int4 table with one scale
per row becomes the same int8 table, its logits on int8 activations too. The loop then reads 1
byte per weight, where the `float` form reads the float weight dtype's.

The third choice, unpacking the uint8 nibbles inside every step (shifts, masks, an interleave),
made XLA on CPU turn the fused unpack and matrix-vector product into a plain loop: 0.14x of bf16
(BENCHMARKS.md, Decoding). XLA converts `jnp.int4` values with one vectorized op instead.
"""

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from efficiency.backends.cpu import int4_decode_form
from efficiency.model.layers import Projection
from efficiency.quant import table
from efficiency.quant.einsum import on_int8_activations
from efficiency.quant.pack import dequantize_int4, int4_codes, unpack_int4

INT4_FORMS = ("auto", "s4", "float")


def int4_form(quant: ml_collections.ConfigDict, backend: str | None = None) -> str:
  """`s4` or `float`: the form packed int4 kernels decode in on `backend` (default jax's)."""
  form = quant.get("int4_decode", "auto")
  if form != "auto":
    return form
  return int4_decode_form(backend or jax.default_backend())


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


def _unpacked_model(model: nn.Module, kernels: bool, embedding: str | None) -> nn.Module:
  """`model` reading float kernels (`kernels`) and its embedding table as `embedding` (none:
  float, int8) where that is given."""
  quant = dict(model.quant)
  if kernels:
    quant.update(serve="none", mode="none")
  if embedding is not None:
    quant.update(embedding=embedding)
  return model.clone(quant=ml_collections.FrozenConfigDict(quant))


def _float_kernels(model: nn.Module, params: dict) -> dict:
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


def _unpack_table(model: nn.Module, params: dict) -> dict:
  """The params with a packed int4 table {embedding_int4, embedding_scale} as a float table."""
  embed = dict(params["embed"])
  codes, scale_VG = embed.pop("embedding_int4"), embed.pop("embedding_scale")
  embed["embedding"] = table.dequantize(codes, scale_VG, 4, jnp.dtype(model.config.param_dtype))
  return {**params, "embed": embed}


def _int8_table(params: dict) -> dict:
  """The params with a packed int4 table of one scale per row as the int8 table of its codes."""
  embed = dict(params["embed"])
  embed["embedding_int8"] = table.codes_of(embed.pop("embedding_int4"), 4)
  return {**params, "embed": embed}


def _kernel_codes(params: dict, name: str, codes_of: Callable) -> dict:
  """The params with each packed `kernel_int4` as `name`, `codes_of` its packed values [K // 2,
  M] (layers stacked by `scan_layers` one by one): jnp.int4 values `kernel_s4` or int8 ones
  `kernel_s8` [K, M]; scales unchanged."""
  out = {}
  for key, value in params.items():
    if key == "kernel_int4":
      out[name] = jax.vmap(codes_of)(value) if value.ndim == 3 else codes_of(value)
    else:
      out[key] = _kernel_codes(value, name, codes_of) if isinstance(value, dict) else value
  return out


def _unstack_layers(params: dict, num_layers: int) -> dict:
  """The params of a scanned model with the stacked `layers` split into `layers_0`.. (the
  params of the same model with `scan_layers` off)."""
  out = {name: value for name, value in params.items() if name != "layers"}
  for i in range(num_layers):
    out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["layers"])
  return out


def _layer_by_layer(model: nn.Module) -> nn.Module:
  """`model` with `scan_layers` off (its own params split by `_unstack_layers`)."""
  config = model.config.to_dict()  # a copy (editing as_configdict()'s would change its hash)
  config["scan_layers"] = False
  return model.clone(config=ml_collections.FrozenConfigDict(config))


def decode_form(model: nn.Module) -> tuple[nn.Module, Callable[[dict], dict]]:
  """The model the decode loop runs and how its params get there (traced under jit)."""
  kernels = model.quant is not None and model.quant.get("serve", "none") == "int4"
  int8_acts = kernels and on_int8_activations(model.quant)
  to_float = kernels and not int8_acts and int4_form(model.quant) == "float"
  int4_table = table.embedding_storage(model.quant) == "int4"
  table_to_int8 = int4_table and int8_acts and not model.quant.get("group_size", 0)
  scanned = model.config.scan_layers

  def unpack(params: dict) -> dict:
    if int8_acts:
      params = _kernel_codes(params, "kernel_s8", unpack_int4)
    elif kernels:
      params = (_float_kernels(model, params) if to_float
                else _kernel_codes(params, "kernel_s4", int4_codes))
    if table_to_int8:
      params = _int8_table(params)
    elif int4_table:
      params = _unpack_table(model, params)
    return _unstack_layers(params, model.config.num_layers) if scanned else params

  if model.quant is not None:
    embedding = ("int8" if table_to_int8 else "none") if int4_table else None
    model = _unpacked_model(model, to_float, embedding)
  return (_layer_by_layer(model) if scanned else model), unpack


def _has_packed_kernels(params: dict) -> bool:
  return any(key == "kernel_int4" or (isinstance(value, dict) and _has_packed_kernels(value))
             for key, value in params.items())


def to_decode_form(model: nn.Module, params: dict) -> tuple[nn.Module, dict]:
  """The model and params the decode loop runs (`decode_form`), converted once here, outside
  any request; a model already in its decode form comes back as it is."""
  decoded, unpack = _converter(model)
  if decoded == model and not _has_packed_kernels(params):
    return model, params
  return decoded, unpack(params)


@functools.cache
def _converter(model: nn.Module) -> tuple[nn.Module, Callable[[dict], dict]]:
  """`decode_form` with its params conversion jitted, once per model."""
  decoded, unpack = decode_form(model)
  return decoded, jax.jit(unpack)
