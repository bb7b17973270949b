"""Devices of a named target topology, for compiling on a machine without the chips.

  devices, chip = target_devices("v5e:2x2")   # 4 TPU v5e chips, through libtpu's compiler
  devices, chip = target_devices("h100:8")    # 8 H100s, through XLA's GPU compiler

A `Mesh` over these devices and `jax.jit(f).lower(...).compile()` compile for the chips and
report their memory and cost analyses; nothing runs. The process must keep jax on the CPU
(`JAX_PLATFORMS=cpu`, set before jax starts: `compile_environment()`). libtpu lets one process
at a time use it (a POSIX lock on `libtpu_lockfile` in the temp directory, held until the
process exits): `target_devices` waits up to `lock_wait_s` for another holder to finish.
"""

import fcntl
import importlib.metadata
import importlib.util
import os
import re
import tempfile
import time
from pathlib import Path

from efficiency.errors import ConfigError
from efficiency.sharding.chips import GPUS, TPUS, Chip, gpu_target_config

# jax release -> the libtpu release built with it.
LIBTPU_FOR_JAX = {"0.10.2": "0.0.42.1"}
TPU_NAME = re.compile(r"^(v4|v5e|v5p|v6e):(\d+)x(\d+)(?:x(\d+))?$")
GPU_NAME = re.compile(r"^(h100|h200):(\d+)$")
EXAMPLES = "TPU: v5e:2x2, v5e:4x4, v5p:2x2x1, v5p:2x2x2, v6e:2x4, v4:2x2x1; GPU: h100:8, h200:8"


def compile_environment() -> dict[str, str]:
  """Environment for compiling for targets on a CPU host (set before jax is imported): jax on
  the CPU; libtpu told it runs on one host, so it neither queries metadata nor logs errors."""
  return {"JAX_PLATFORMS": "cpu", "TPU_SKIP_MDS_QUERY": "1", "TPU_WORKER_HOSTNAMES": "localhost",
          "TPU_ACCELERATOR_TYPE": "v5litepod-4", "JAX_SKIP_CUDA_CONSTRAINTS_CHECK": "1"}


def parse(name: str) -> tuple[Chip, int]:
  """The chip and chip count a topology name describes; ConfigError naming valid forms."""
  if m := TPU_NAME.match(name):
    dims = [int(d) for d in m.groups()[1:] if d is not None]
    if m[1] in ("v4", "v5p") and len(dims) != 3 or m[1] in ("v5e", "v6e") and len(dims) != 2:
      form = "AxBxC" if m[1] in ("v4", "v5p") else "AxB"
      raise ConfigError(f"--topology={name}: {m[1]} topologies are {form}; e.g. {EXAMPLES}")
    count = 1
    for d in dims:
      count *= d
    return TPUS[m[1]], count
  if m := GPU_NAME.match(name):
    if int(m[2]) < 1:
      raise ConfigError(f"--topology={name}: the GPU count must be at least 1")
    return GPUS[m[1]].chip, int(m[2])
  raise ConfigError(f"--topology={name!r} is unknown; valid forms: {EXAMPLES}")


def _version(dist: str) -> str | None:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return None


def check_compiler(name: str, chip: Chip) -> None:
  """ConfigError when the compiler for `chip` is missing or does not match jax."""
  jax_version = importlib.metadata.version("jax")
  if chip.platform == "tpu":
    want, have = LIBTPU_FOR_JAX.get(jax_version), _version("libtpu")
    if have is None or importlib.util.find_spec("libtpu") is None:
      raise ConfigError(f"--topology={name} needs libtpu=={want} (jax {jax_version}'s pair) on "
                        "Linux x86_64: pip install -c constraints.txt -e '.[dev]'")
    if want and have != want:
      raise ConfigError(f"--topology={name}: libtpu {have} does not match jax {jax_version}; "
                        f"install libtpu=={want}")
    return
  have = _version("jax-cuda12-plugin")
  if have is None or _version("jax-cuda12-pjrt") is None:
    raise ConfigError(f"--topology={name} needs jax's CUDA plugin "
                      f"(jax-cuda12-plugin=={jax_version}, jax-cuda12-pjrt) on Linux x86_64: "
                      "pip install -c constraints.txt -e '.[dev]'")
  if have != jax_version:
    raise ConfigError(f"--topology={name}: jax-cuda12-plugin {have} does not match jax "
                      f"{jax_version}; install jax-cuda12-plugin=={jax_version}")


LIBTPU_LOCKFILE = Path(tempfile.gettempdir()) / "libtpu_lockfile"


def _libtpu_holder() -> str | None:
  """The process id holding libtpu's lockfile (another process using libtpu), or None."""
  if not LIBTPU_LOCKFILE.exists():
    return None
  with open(LIBTPU_LOCKFILE, "a") as f:
    try:
      fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      inode = os.stat(LIBTPU_LOCKFILE).st_ino
      for line in Path("/proc/locks").read_text().splitlines() if os.path.exists(
          "/proc/locks") else []:
        fields = line.split()
        if len(fields) > 5 and fields[5].endswith(f":{inode}"):
          return fields[4]
      return "another process"
    fcntl.lockf(f, fcntl.LOCK_UN)
  return None


def wait_for_libtpu(name: str, lock_wait_s: float) -> None:
  """Waits up to `lock_wait_s` for another process to release libtpu; ConfigError after."""
  deadline = time.monotonic() + lock_wait_s
  while (holder := _libtpu_holder()) is not None:
    if time.monotonic() > deadline:
      raise ConfigError(
          f"--topology={name}: libtpu is in use by process {holder} (it holds {LIBTPU_LOCKFILE} "
          "until it exits; one process at a time compiles for TPU); wait for it to finish, or "
          "raise --lock_wait_s"
      )
    time.sleep(1.0)


def target_devices(name: str, lock_wait_s: float = 600.0) -> tuple[list, Chip]:
  """The devices of topology `name` (compile-only) and its chip."""
  chip, count = parse(name)
  check_compiler(name, chip)
  from jax.experimental import topologies

  if chip.platform == "tpu":
    wait_for_libtpu(name, lock_wait_s)
    topology = name.split(":")[1]
    single = {"chips_per_host_bounds": (1, 1, 1)} if count == 1 else {}
    try:
      devices = topologies.get_topology_desc(
          platform="tpu", topology_name=f"{chip.name}:{topology}", **single
      ).devices
    except Exception as e:  # noqa: BLE001  (libtpu's own errors, one line)
      raise ConfigError(f"--topology={name}: libtpu refused it: {str(e).splitlines()[0]}; "
                        f"valid forms: {EXAMPLES}") from e
    return list(devices), chip
  devices = topologies.get_topology_desc(
      chip.name, "cuda", target_config=gpu_target_config(GPUS[chip.name]),
      topology=f"1x1x{count}",
  ).devices
  return list(devices), chip
