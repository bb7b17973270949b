"""The mesh and chip platform a program is traced for, set by whoever owns the mesh.

`jax.default_backend()` names the host's platform, which stays "cpu" when the program is compiled
for a TPU or GPU topology on a CPU machine; code that picks kernels by platform, or wraps them in
`shard_map`, asks `current_platform()` and `current_mesh()` instead. `Training.context()` enters
`tracing_for(mesh)`; outside it the default backend and no mesh apply.
"""

import contextlib
import threading
from collections.abc import Iterator

import jax
from jax.sharding import Mesh

_TARGET = threading.local()
# jax device platforms -> the platform names kernels are chosen by.
PLATFORMS = {"tpu": "tpu", "cuda": "gpu", "rocm": "gpu", "gpu": "gpu", "cpu": "cpu"}


def platform_of(devices) -> str:
  """"tpu", "gpu" or "cpu": the platform of these devices (TPU topology devices included)."""
  platform = next(iter(devices)).platform
  return PLATFORMS.get(platform, platform)


@contextlib.contextmanager
def tracing_for(mesh: Mesh) -> Iterator[None]:
  """Traces inside run for `mesh`: its devices' platform, its axes for `shard_map`."""
  previous = getattr(_TARGET, "mesh", None)
  _TARGET.mesh = mesh
  try:
    yield
  finally:
    _TARGET.mesh = previous


def current_mesh() -> Mesh | None:
  """The mesh being traced for, or None outside `tracing_for`."""
  return getattr(_TARGET, "mesh", None)


def current_platform() -> str:
  """The platform being traced for: the current mesh's, else jax's default backend."""
  mesh = current_mesh()
  return jax.default_backend() if mesh is None else platform_of(mesh.devices.flat)
