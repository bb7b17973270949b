"""The interface every PEFT method implements, and the shared adapter machinery.

A method splits the (boxed, logically partitioned) base parameters into a trainable tree, which
alone gets gradients and optimizer state, and a frozen tree; `combine` joins them back into the
parameters `Transformer.apply` takes (adapters merged). Merging adapters is `combine` written to
a checkpoint. Training applies `apply_params` instead, to the model `train_model` returns: the
same function of the trainable tree, arranged so that the backward pass does only the work the
trainable tree needs (adapters in the forward pass, no backward through frozen layers).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from flax import traverse_util

from efficiency.errors import ConfigError
from efficiency.peft import int4, int8
from efficiency.peft.targets import KernelLayout, layout_of, select

Params = dict


class Method:
  """Base class: `split` base params into (trainable, frozen), `combine` them back."""

  default_targets = "*"

  def __init__(self, cfg: ml_collections.ConfigDict, boxed_base: Params, specs: dict):
    self.cfg = cfg
    self.targets = cfg.targets or self.default_targets

  def split(self, boxed_base: Params, rng: jax.Array) -> tuple[Params, Params | None]:
    raise NotImplementedError

  def combine(self, trainable: Params, frozen: Params | None) -> Params:
    raise NotImplementedError

  def apply_params(self, trainable: Params, frozen: Params | None) -> Params:
    """The params `train_model` applies in training; by default the combined ones."""
    return self.combine(trainable, frozen)

  # Leading layers that run as a frozen prefix with no backward pass (Transformer.frozen_layers).
  frozen_layers = 0

  def train_model(self, model: nn.Module) -> nn.Module:
    """The model training applies `apply_params` to: `model`, split after its frozen prefix."""
    return model.clone(frozen_layers=self.frozen_layers) if self.frozen_layers else model

  # A method with per-parameter learning rates defines lr_multipliers(trainable) -> tree of floats.
  lr_multipliers = None


def stack_depth(flat: dict) -> int:
  """Layers of the model's scanned stack (the leading `layers` axis of its boxed params; 0: the
  model does not scan its layers)."""
  return next((b.value.shape[0] for b in flat.values() if b.names[:1] == ("layers",)), 0)


def prefix_params(flat: dict, n: int) -> dict:
  """Flat params of a model split at layer `n` (`Transformer.frozen_layers`): the first `n`
  layers of every stacked leaf under `frozen_layers`, the rest under `layers`."""
  out = {}
  for path, value in flat.items():
    if path[0] == "layers":
      out[("frozen_layers", *path[1:])], out[path] = value[:n], value[n:]
    else:
      out[path] = value
  return out


def flatten(tree: Params) -> dict[tuple[str, ...], object]:
  return traverse_util.flatten_dict(tree, is_leaf=lambda _, x: not isinstance(x, dict))


def unflatten(flat: dict) -> Params:
  return traverse_util.unflatten_dict(flat)


class Adapter(Method):
  """Adapters on projection kernels. Training computes them in the forward pass (x @ W +
  (x @ A) @ (scale B), efficiency.model.adapter) with W frozen; `combine` gives the merged
  kernels, `effective` of the base kernel and the adapter leaves."""

  def __init__(self, cfg: ml_collections.ConfigDict, boxed_base: Params, specs: dict):
    super().__init__(cfg, boxed_base, specs)
    flat = flatten(boxed_base)
    by_name = {"/".join(path): path for path in specs if path + ("kernel",) in flat}
    chosen = select(list(by_name), self.targets, "projections")
    self.layouts: dict[tuple[str, ...], KernelLayout] = {}
    self.dtypes: dict[tuple[str, ...], jnp.dtype] = {}
    for name in chosen:
      path = by_name[name]
      box = flat[path + ("kernel",)]
      self.layouts[path] = layout_of(specs[path], box.value.shape, box.names)
      self.dtypes[path] = box.value.dtype
    if cfg.base_quant == "int4":
      for path, layout in self.layouts.items():
        int4.check("/".join(path), layout, self.group_size)
    depth, self.adapter_layers = stack_depth(flat), int(cfg.get("adapter_layers", 0))
    if self.adapter_layers < 0 or (depth and self.adapter_layers > depth) or \
        (self.adapter_layers and not depth):
      valid = f"0..{depth}" if depth else "0 (the model does not scan its layers)"
      raise ConfigError(f"peft.adapter_layers={self.adapter_layers} is invalid; valid choices: "
                        f"{valid}")
    # With adapters on the last layers only, the layers below run as a frozen prefix.
    self.frozen_layers = depth - self.adapter_layers if self.adapter_layers else 0
    self.stacked = {p for p, box in ((p, flat[p + ("kernel",)]) for p in self.layouts)
                    if box.names[:1] == ("layers",)} if self.frozen_layers else set()

  @property
  def group_size(self) -> int:
    """Rows per scale of an int4 base along the contracted dims (0: per output channel)."""
    return int(self.cfg.get("base_group_size", 0))

  @property
  def scale(self) -> float:
    """The factor on B @ A: alpha / rank."""
    return self.cfg.alpha / self.cfg.rank

  def init_adapter(
      self, layout: KernelLayout, kernel: jax.Array, rng: jax.Array
  ) -> tuple[dict[str, nn.Partitioned], jax.Array]:
    """Initial adapter leaves of one kernel and the kernel the frozen tree keeps."""
    return lora_init(layout, kernel, self.cfg.rank, rng), kernel

  def effective(self, layout: KernelLayout, kernel: jax.Array, adapter: dict) -> jax.Array:
    """The kernel the model uses: W + scale * A @ B."""
    delta = layout.product(adapter["lora_a"], adapter["lora_b"])
    return kernel + (self.scale * delta).astype(kernel.dtype)

  def split(self, boxed_base: Params, rng: jax.Array) -> tuple[Params, Params]:
    flat = flatten(boxed_base)
    trainable = {}
    for i, (path, layout) in enumerate(sorted(self.layouts.items())):
      box = flat[path + ("kernel",)]
      adapter, kept = self.init_adapter(layout, box.value, jax.random.fold_in(rng, i))
      if path in self.stacked:  # adapters (and PiSSA's residual) on the last layers only
        n = self.frozen_layers
        adapter = {k: leaf.replace_boxed(leaf.value[n:]) for k, leaf in adapter.items()}
        kept = jnp.concatenate([box.value[:n], kept[n:]])
      for name, leaf in adapter.items():
        trainable[path + (name,)] = leaf
      if self.cfg.base_quant == "int8":
        q, s = int8.quantize(kept, layout.contract_axes)
        scale_names = tuple(None if i in layout.contract_axes else n
                            for i, n in enumerate(box.names))
        flat[path + ("kernel", "int8")] = nn.Partitioned(q, box.names)
        flat[path + ("kernel", "scale")] = nn.Partitioned(s, scale_names)
        del flat[path + ("kernel",)]
      elif self.cfg.base_quant == "int4":  # replicated but for the stack dims, as in serving
        packed, s = int4.quantize(layout, kept, self.group_size)
        names = (*box.names[: layout.stack_dims], None, None)
        flat[path + ("kernel", "int4")] = nn.Partitioned(packed, names)
        flat[path + ("kernel", "scale")] = nn.Partitioned(s, names)
        del flat[path + ("kernel",)]
      else:
        flat[path + ("kernel",)] = box.replace_boxed(kept)
    return unflatten(trainable), unflatten(flat)

  def _adapters(self, trainable: Params) -> dict[tuple[str, ...], dict]:
    adapters = {path: {} for path in self.layouts}
    for key, leaf in flatten(trainable).items():
      adapters[key[:-1]][key[-1]] = leaf
    return adapters

  def base_kernel(self, layout: KernelLayout, params: dict, path: tuple[str, ...]) -> jax.Array:
    """Pops the frozen base kernel of `path` from flat `params`, dequantized to float."""
    kernel = params.pop(path + ("kernel",), None)
    if kernel is not None:
      return kernel
    scale = params.pop(path + ("kernel", "scale"))
    if path + ("kernel", "int8") in params:
      return int8.dequantize(params.pop(path + ("kernel", "int8")), scale)
    return int4.dequantize(layout, params.pop(path + ("kernel", "int4")), scale, self.dtypes[path])

  def combine(self, trainable: Params, frozen: Params) -> Params:
    params = flatten(frozen)
    for path, adapter in self._adapters(trainable).items():
      layout = self.layouts[path]
      kernel = self.base_kernel(layout, params, path)
      if path in self.stacked:
        n = self.frozen_layers
        params[path + ("kernel",)] = jnp.concatenate(
            [kernel[:n], self.effective(layout, kernel[n:], adapter)])
      else:
        params[path + ("kernel",)] = self.effective(layout, kernel, adapter)
    return unflatten(params)

  def apply_params(self, trainable: Params, frozen: Params) -> Params:
    """Each targeted projection's frozen base (`kernel`, or `kernel_int8` / `kernel_int4` with
    `kernel_scale`) beside its adapters, B times `scale`: efficiency.model.adapter's layout."""
    params = flatten(frozen)
    for path in self.layouts:
      for storage in ("int8", "int4", "scale"):
        if path + ("kernel", storage) in params:
          params[path + (f"kernel_{storage}",)] = params.pop(path + ("kernel", storage))
    if self.frozen_layers:
      params = prefix_params(params, self.frozen_layers)
    for path, adapter in self._adapters(trainable).items():
      for name, leaf in adapter.items():
        params[path + (name,)] = (self.scale * leaf).astype(leaf.dtype) if name == "lora_b" \
            else leaf
    return unflatten(params)


def lora_init(
    layout: KernelLayout, kernel: jax.Array, rank: int, rng: jax.Array
) -> dict[str, nn.Partitioned]:
  """A ~ U(-1/sqrt(in), 1/sqrt(in)) [*batch, *contract, r] and B = 0 [*batch, r, *out]."""
  a_shape, a_names = layout.dims(layout.batch + layout.contract)
  b_shape, b_names = layout.dims(layout.batch)
  out_shape, out_names = layout.dims(layout.out)
  bound = 1.0 / jnp.sqrt(layout.in_features)
  a = jax.random.uniform(rng, (*a_shape, rank), kernel.dtype, -bound, bound)
  b = jnp.zeros((*b_shape, rank, *out_shape), kernel.dtype)
  return {
      "lora_a": nn.Partitioned(a, (*a_names, None)),
      "lora_b": nn.Partitioned(b, (*b_names, None, *out_names)),
  }
