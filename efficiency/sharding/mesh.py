"""Device mesh from `config.mesh`, and shardings for parameters, state and batches."""

import math

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from efficiency.errors import ConfigError
from efficiency.sharding.rules import LOGICAL_AXIS_RULES

MESH_AXES = ("data", "fsdp", "tensor", "expert")
BATCH_AXES = ("data", "fsdp", "expert")


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> dict[str, int]:
  """Resolves `config.mesh` sizes against the device count; one -1 fills the rest.

  Raises ConfigError naming the mesh and the device count when they do not match.
  """
  sizes = {axis: int(mesh_config.get(axis, 1)) for axis in MESH_AXES}
  fill = [a for a, s in sizes.items() if s == -1]
  bad = [a for a, s in sizes.items() if s == 0 or s < -1]
  if bad or len(fill) > 1:
    raise ConfigError(
        f"mesh={sizes} is invalid: sizes must be positive, with at most one -1 to fill the rest"
    )
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if fill:
    if num_devices % fixed:
      raise ConfigError(
          f"mesh={sizes} does not match {num_devices} devices: the fixed axes' product {fixed} "
          f"must divide the device count"
      )
    sizes[fill[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ConfigError(
        f"mesh={sizes} has {fixed} devices but {num_devices} are available; "
        "make the product equal the device count or set one axis to -1"
    )
  return sizes


def make_mesh(mesh_config: ml_collections.ConfigDict, devices=None) -> Mesh:
  """A Mesh with axes (data, fsdp, tensor, expert) over all (or the given) devices."""
  devices = jax.devices() if devices is None else devices
  sizes = mesh_shape(mesh_config, len(devices))
  shape = tuple(sizes[a] for a in MESH_AXES)
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)


def _fit_spec(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
  """Drops mesh axes from dimensions they do not divide evenly (e.g. 1 KV head over tensor=2)."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = math.prod(mesh.shape[n] for n in names)
    fitted.append(axes if names and dim % size == 0 else None)
  return PartitionSpec(*fitted)


def unboxed(tree):
  """The values of a tree of logically partitioned boxes, with no sharding constraint applied
  (what abstract trees need inside a mesh context)."""
  is_box = lambda x: isinstance(x, nn.Partitioned)
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree,
                      is_leaf=is_box)


def logical_shardings(abstract_tree, mesh: Mesh):
  """NamedShardings for a tree of boxed (logically partitioned) abstract values."""
  specs = nn.get_partition_spec(abstract_tree)
  mesh_specs = nn.logical_to_mesh(specs, LOGICAL_AXIS_RULES)
  shapes = unboxed(abstract_tree)
  return jax.tree.map(
      lambda spec, x: NamedSharding(mesh, _fit_spec(spec, x.shape, mesh)),
      mesh_specs,
      shapes,
      is_leaf=lambda x: isinstance(x, PartitionSpec),
  )


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows split over data x fsdp x expert, sequence replicated."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES, None))


def data_parallel_size(mesh_config: ml_collections.ConfigDict, num_devices: int) -> int:
  """How many ways the batch is split: data x fsdp x expert."""
  sizes = mesh_shape(mesh_config, num_devices)
  return math.prod(sizes[a] for a in BATCH_AXES)


def to_global(local_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles each process's rows into global arrays; no host holds the whole batch."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
