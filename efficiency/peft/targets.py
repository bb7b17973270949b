"""Which parameters a PEFT method touches: projection kernels and parameter paths by name pattern.

A path is the `/`-joined module (or parameter) path, for example `layers/attn/query` or
`layers/mlp/down/kernel`. A pattern is a glob matched against the whole path or any `/`-suffix
of it, so `query` matches `layers/attn/query`, `attn/*` every attention projection and `*` all.
"""

import dataclasses
import fnmatch
import functools
import json
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from efficiency.errors import ConfigError
from efficiency.model.adapter import RANK_LETTER
from efficiency.model.layers import Projection
from efficiency.model.transformer import make_model

STACK_LETTERS = "ABCDEFGH"  # leading axes a kernel has beyond its spec (nn.scan's `layers`)


@dataclasses.dataclass(frozen=True)
class KernelLayout:
  """A projection kernel seen as a batch of matrices: (batch dims) x (input dims) x (output dims).

  Letters index the kernel's dims in order. `batch` holds stacked layers and dims shared by input,
  kernel and output (MoE experts); `contract` the dims summed with the input; `out` the rest.
  """

  letters: str
  batch: str
  contract: str
  out: str
  shape: tuple[int, ...]
  names: tuple[str | None, ...]
  spec: str  # the Projection's einsum, over the kernel without its stack dims

  @property
  def stack_dims(self) -> int:
    """Leading dims beyond the spec's kernel (nn.scan's `layers`)."""
    return len(self.shape) - len(self.spec.split(",")[1].split("->")[0])

  def dims(self, letters: str) -> tuple[tuple[int, ...], tuple[str | None, ...]]:
    """Sizes and logical names of the given letters' dims."""
    idx = [self.letters.index(c) for c in letters]
    return tuple(self.shape[i] for i in idx), tuple(self.names[i] for i in idx)

  @property
  def contract_axes(self) -> tuple[int, ...]:
    return tuple(self.letters.index(c) for c in self.contract)

  @property
  def in_features(self) -> int:
    return math.prod(self.dims(self.contract)[0])

  @property
  def matrices_shape(self) -> tuple[int, ...]:
    """[*batch, in, out] sizes of `matrices`."""
    out = math.prod(self.dims(self.out)[0])
    return (*self.dims(self.batch)[0], self.in_features, out)

  def matrices(self, kernel: jax.Array) -> jax.Array:
    """[*batch, in, out]: the kernel as a batch of (input x output) matrices."""
    order = self.batch + self.contract + self.out
    moved = jnp.einsum(f"{self.letters}->{order}", kernel)
    batch_shape = self.dims(self.batch)[0]
    return moved.reshape(*batch_shape, self.in_features, -1)

  def product(self, a: jax.Array, b: jax.Array) -> jax.Array:
    """The kernel-shaped product A @ B of adapters A [*batch, *contract, r], B [*batch, r, *out]."""
    r = RANK_LETTER
    return jnp.einsum(
        f"{self.batch}{self.contract}{r},{self.batch}{r}{self.out}->{self.letters}", a, b
    )


def layout_of(spec: str, shape: Sequence[int], names: Sequence[str | None]) -> KernelLayout:
  """The layout of a kernel of `shape` used by the einsum `spec` ("inputs,kernel->outputs")."""
  inputs, rest = spec.split(",")
  kernel, outputs = rest.split("->")
  stack = STACK_LETTERS[: len(shape) - len(kernel)]
  shared = "".join(c for c in kernel if c in inputs and c in outputs)
  return KernelLayout(
      letters=stack + kernel,
      batch=stack + shared,
      contract="".join(c for c in kernel if c in inputs and c not in outputs),
      out="".join(c for c in kernel if c in outputs and c not in inputs),
      shape=tuple(shape),
      names=tuple(names),
      spec=spec,
  )


def abstract_model(config: ml_collections.ConfigDict):
  """The model of `config` (its model and quant sections), its boxed abstract params and every
  Projection's einsum spec by module path."""
  quant = config.quant.to_dict() if "quant" in config else None
  sections = {"model": config.model.to_dict(), "quant": quant}
  model, boxed, specs = _abstract_model(json.dumps(sections, sort_keys=True))
  return model, boxed, dict(specs)


@functools.lru_cache(maxsize=16)
def _abstract_model(sections_json: str):
  model = make_model(ml_collections.ConfigDict(json.loads(sections_json)))
  specs: dict[tuple[str, ...], str] = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, Projection) and context.method_name == "__call__":
      specs[tuple(context.module.path)] = context.module.spec
    return next_fun(*args, **kwargs)

  tokens = jnp.zeros((1, 8), jnp.int32)
  with nn.intercept_methods(record):
    boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, tokens + 1, tokens))
  return model, boxed["params"], specs


def matches(path: str, pattern: str) -> bool:
  """Whether `pattern` matches the whole `/`-joined path or one of its `/`-suffixes."""
  return fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(path, "*/" + pattern)


def parse_patterns(targets: str) -> list[str]:
  return [p.strip() for p in targets.split(",") if p.strip()]


def select(paths: Sequence[str], targets: str, what: str) -> list[str]:
  """The paths any pattern in comma-separated `targets` matches; each pattern must match one."""
  patterns = parse_patterns(targets)
  if not patterns:
    raise ConfigError(f"peft.targets={targets!r} names no pattern; matchable {what}: {list(paths)}")
  for pattern in patterns:
    if not any(matches(p, pattern) for p in paths):
      raise ConfigError(
          f"peft.targets pattern {pattern!r} matches nothing; matchable {what}: {list(paths)}"
      )
  return [p for p in paths if any(matches(p, pattern) for pattern in patterns)]
