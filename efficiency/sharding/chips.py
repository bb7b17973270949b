"""The chips a program can be compiled for without one, from their published figures.

TPU topologies come from libtpu's compiler (`jax.experimental.topologies`); GPUs from XLA's GPU
target description (`GpuTargetConfigProto` as text), written here from NVIDIA's published
figures for the SXM parts. `hbm_bytes` is the memory a program may address on one chip (for
GPUs, what CUDA reports as total memory).
"""

import dataclasses

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator: its jax device kind, platform ("tpu" or "gpu") and memory."""

  name: str
  kind: str
  platform: str
  hbm_bytes: int


TPUS = {
    "v4": Chip("v4", "TPU v4", "tpu", 32 * GIB),
    "v5e": Chip("v5e", "TPU v5 lite", "tpu", 16 * GIB),
    "v5p": Chip("v5p", "TPU v5", "tpu", 95 * GIB),
    "v6e": Chip("v6e", "TPU v6 lite", "tpu", 32 * GIB),
}


@dataclasses.dataclass(frozen=True)
class GpuFigures:
  """The figures XLA's GPU compiler plans with (per SM unless said otherwise)."""

  chip: Chip
  sm_count: int
  compute_capability: tuple[int, int]
  shared_memory_per_sm: int
  shared_memory_per_block_optin: int
  registers_per_sm: int
  threads_per_sm: int
  l2_cache_bytes: int
  memory_bandwidth_bytes_s: int
  clock_ghz: float
  fp32_units_per_sm: int


_HOPPER = dict(
    sm_count=132, compute_capability=(9, 0), shared_memory_per_sm=228 * 1024,
    shared_memory_per_block_optin=227 * 1024, registers_per_sm=65536, threads_per_sm=2048,
    l2_cache_bytes=50 * 2**20, clock_ghz=1.98, fp32_units_per_sm=128,
)
GPUS = {
    "h100": GpuFigures(Chip("h100", "NVIDIA H100 80GB HBM3", "gpu", int(79.1 * GIB)),
                       memory_bandwidth_bytes_s=3_350 * 10**9, **_HOPPER),
    "h200": GpuFigures(Chip("h200", "NVIDIA H200", "gpu", int(139.8 * GIB)),
                       memory_bandwidth_bytes_s=4_800 * 10**9, **_HOPPER),
}


def gpu_target_config(gpu: GpuFigures) -> str:
  """XLA's GPU target description of `gpu` as a text proto (what `get_topology_desc` takes)."""
  major, minor = gpu.compute_capability
  return f"""
gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {gpu.shared_memory_per_sm}
  threads_per_core_limit: {gpu.threads_per_sm}
  core_count: {gpu.sm_count}
  fpus_per_core: {gpu.fp32_units_per_sm}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {gpu.memory_bandwidth_bytes_s}
  l2_cache_size: {gpu.l2_cache_bytes}
  clock_rate_ghz: {gpu.clock_ghz}
  device_memory_size: {gpu.chip.hbm_bytes}
  shared_memory_per_block_optin: {gpu.shared_memory_per_block_optin}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: {gpu.registers_per_sm}
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
runtime_version {{ major: 12 minor: 8 }}
device_description_str: "{gpu.chip.kind}"
"""
