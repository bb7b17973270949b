"""Freeze: train only the parameters `peft.targets` names; of those stacked over layers (nn.scan),
only the last `peft.last_layers` layers (0: all). Everything else stays frozen.

When nothing trains below the last `peft.last_layers` layers (the embedding frozen), training
runs the frozen prefix as its own scan with no backward pass (Transformer.frozen_layers)."""

import jax.numpy as jnp

from efficiency.errors import ConfigError
from efficiency.peft.method import Method, flatten, prefix_params, stack_depth, unflatten
from efficiency.peft.targets import select

# Top-level params the model applies after its layer stack.
LAYERS_ABOVE = ("final_norm", "unembed")


class Freeze(Method):
  """Trains a named subset of the base parameters in place."""

  default_targets = "layers/*"

  def __init__(self, cfg, boxed_base, specs):
    super().__init__(cfg, boxed_base, specs)
    flat = flatten(boxed_base)
    names = {"/".join(path): path for path in flat}
    self.chosen = [names[n] for n in select(list(names), self.targets, "parameters")]
    self.last_layers = int(cfg.last_layers)
    depth = stack_depth(flat)
    if self.last_layers < 0 or (depth and self.last_layers > depth):
      raise ConfigError(
          f"peft.last_layers={self.last_layers} is invalid; valid choices: 0..{depth}"
      )
    self.partial = {p for p in self.chosen if flat[p].names[:1] == ("layers",)} \
        if self.last_layers and self.last_layers < depth else set()
    above = all(p in self.partial or p[0] in LAYERS_ABOVE for p in self.chosen)
    self.frozen_layers = depth - self.last_layers if self.partial and above else 0

  def split(self, boxed_base, rng):
    del rng
    frozen = flatten(boxed_base)
    trainable = {}
    for path in self.chosen:
      box = frozen.pop(path)
      if path in self.partial:
        frozen[path] = box.replace_boxed(box.value[: -self.last_layers])
        trainable[path] = box.replace_boxed(box.value[-self.last_layers :])
      else:
        trainable[path] = box
    return unflatten(trainable), unflatten(frozen)

  def apply_params(self, trainable, frozen):
    """With a frozen prefix: its layers' params as `frozen_layers`, the rest as `layers`."""
    if not self.frozen_layers:
      return self.combine(trainable, frozen)
    params, n = flatten(frozen), self.frozen_layers
    prefix = {p: params.pop(p) for p in self.partial}  # the frozen tree holds only the prefix
    params = prefix_params(params, n)
    params.update({("frozen_layers", *p[1:]): v for p, v in prefix.items()})
    params.update(flatten(trainable))
    return unflatten(params)

  def combine(self, trainable, frozen):
    params = flatten(frozen)
    for path, value in flatten(trainable).items():
      params[path] = jnp.concatenate([params[path], value]) if path in self.partial else value
    return unflatten(params)

