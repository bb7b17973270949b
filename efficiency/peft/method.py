"""The interface every PEFT method implements, and the shared adapter machinery.

A method splits the (boxed, logically partitioned) base parameters into a trainable tree, which
alone gets gradients and optimizer state, and a frozen tree; `combine` joins them back into the
parameters `Transformer.apply` takes. Merging adapters is `combine` written to a checkpoint.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from flax import traverse_util

from efficiency.peft import int8
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

  # A method with per-parameter learning rates defines lr_multipliers(trainable) -> tree of floats.
  lr_multipliers = None


def flatten(tree: Params) -> dict[tuple[str, ...], object]:
  return traverse_util.flatten_dict(tree, is_leaf=lambda _, x: not isinstance(x, dict))


def unflatten(flat: dict) -> Params:
  return traverse_util.unflatten_dict(flat)


class Adapter(Method):
  """Adapters on projection kernels: the effective kernel is computed from the frozen base kernel
  and trainable adapter leaves before every forward pass; the model code is untouched."""

  def __init__(self, cfg: ml_collections.ConfigDict, boxed_base: Params, specs: dict):
    super().__init__(cfg, boxed_base, specs)
    flat = flatten(boxed_base)
    by_name = {"/".join(path): path for path in specs if path + ("kernel",) in flat}
    chosen = select(list(by_name), self.targets, "projections")
    self.layouts: dict[tuple[str, ...], KernelLayout] = {}
    for name in chosen:
      path = by_name[name]
      box = flat[path + ("kernel",)]
      self.layouts[path] = layout_of(specs[path], box.value.shape, box.names)

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
      for name, leaf in adapter.items():
        trainable[path + (name,)] = leaf
      if self.cfg.base_quant == "int8":
        q, s = int8.quantize(kept, layout.contract_axes)
        scale_names = tuple(None if i in layout.contract_axes else n
                            for i, n in enumerate(box.names))
        flat[path + ("kernel", "int8")] = nn.Partitioned(q, box.names)
        flat[path + ("kernel", "scale")] = nn.Partitioned(s, scale_names)
        del flat[path + ("kernel",)]
      else:
        flat[path + ("kernel",)] = box.replace_boxed(kept)
    return unflatten(trainable), unflatten(flat)

  def combine(self, trainable: Params, frozen: Params) -> Params:
    params = flatten(frozen)
    adapters = flatten(trainable)
    for path, layout in self.layouts.items():
      kernel = params.pop(path + ("kernel",), None)
      if kernel is None:
        kernel = int8.dequantize(
            params.pop(path + ("kernel", "int8")), params.pop(path + ("kernel", "scale"))
        )
      adapter = {k[-1]: v for k, v in adapters.items() if k[:-1] == path}
      params[path + ("kernel",)] = self.effective(layout, kernel, adapter)
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
