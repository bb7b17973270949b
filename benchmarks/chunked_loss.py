"""The chunked loss (`model.loss_chunk`) against the plain one: per-chip memory and FLOPs of the
compiled train step for a TPU topology (libtpu's compiler, no TPU needed), and CPU step times
measured side by side.

  TPU_SKIP_MDS_QUERY=1 JAX_PLATFORMS=cpu python -m benchmarks.chunked_loss \
      --topology=v5e:2x2 --config=configs/efficientllm.py:0.5b --batch_size=16 --chunks=0,256,1024
  JAX_PLATFORMS=cpu python -m benchmarks.chunked_loss --cpu_steps=20 --chunks=0,256

  JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 JAX_PLATFORMS=cpu python -m benchmarks.chunked_loss \
      --h100=4 --config=configs/efficientllm.py:0.5b --batch_size=16 --chunks=0,256

Needs `pip install libtpu` (the release that pairs with jax) for --topology, and jax's CUDA
plugin (`pip install "jax[cuda12]"` at jax's version) for --h100. XLA's cost analysis counts a
loop body once, so the FLOPs of a chunked step count one chunk of the loss (see
tests/efficiency/train/test_loss.py for the FLOPs of the whole loss).
"""

import argparse
import importlib
import json
import time

import jax
import numpy as np
from tqdm import tqdm

from efficiency.config import override, resolve
from efficiency.sharding.mesh import make_mesh
from efficiency.train.plan import BATCH_DTYPES
from efficiency.train.setup import Training


def load(spec: str, overrides: list[str]):
  """The config of `path.py[:arg]` with `field=value` overrides."""
  path, _, arg = spec.partition(":")
  module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
  config = module.get_config(arg or None)
  for item in overrides:
    field, _, value = item.partition("=")
    override(config, field, value)
  return config


def tpu_devices(topology: str) -> list:
  """The devices of a TPU topology such as v5e:2x2 (compile-only)."""
  from jax.experimental import topologies

  return list(topologies.get_topology_desc(platform="tpu", topology_name=topology).devices)


# An H100 SXM 80GB as XLA's GPU target description (GpuTargetConfigProto text), from NVIDIA's
# published figures: 132 SMs of compute capability 9.0, 228 KB shared memory per SM (227 KB per
# block opt-in), 2048 threads and 65,536 registers per SM, 50 MB L2, 3.35 TB/s, 1.98 GHz.
H100 = """gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132
  fpus_per_core: 128 block_dim_limit_x: 2147483647 block_dim_limit_y: 65535
  block_dim_limit_z: 65535 memory_bandwidth: 3352000000000 l2_cache_size: 52428800
  clock_rate_ghz: 1.98 device_memory_size: 84929347584 shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 minor: 0 }
  registers_per_core_limit: 65536 registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 8 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""


def gpu_devices(count: int) -> list:
  """`count` simulated H100s (compile-only; needs jax's CUDA plugin, no GPU or driver)."""
  from jax.experimental import topologies

  desc = topologies.get_topology_desc("h100", "cuda", target_config=H100,
                                      topology=f"1x1x{count}")
  return list(desc.devices)


def compiled_row(config, devices, chunk: int) -> dict:
  """Per-chip bytes and FLOPs of the train step compiled with `model.loss_chunk=chunk`."""
  config = config.copy_and_resolve_references()
  config.model.loss_chunk = chunk
  config = resolve(config, len(devices), backend=devices[0].platform)
  training = Training(config, mesh=make_mesh(config.mesh, devices))
  example = {k: np.zeros((1, 1), dtype) for k, dtype in BATCH_DTYPES.items()}
  compiled, seconds = training.compile(example)
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return {
      "loss_chunk": chunk,
      "temp_bytes": memory.temp_size_in_bytes,
      "argument_bytes": memory.argument_size_in_bytes,
      "output_bytes": memory.output_size_in_bytes,
      "alias_bytes": memory.alias_size_in_bytes,
      "flops": float(cost.get("flops", 0.0)) if cost else None,  # None: no cost analysis
      "compile_s": round(seconds, 1),
  }


def cpu_times(config, chunks: list[int], steps: int) -> dict[int, float]:
  """Median seconds per train step on the CPU for each chunk value, the arms interleaved step by
  step in one process (so load on the machine hits them alike)."""
  arms = {}
  rng = np.random.default_rng(0)
  for chunk in chunks:
    c = config.copy_and_resolve_references()
    c.model.loss_chunk = chunk
    c = resolve(c, jax.device_count())
    training = Training(c)
    shape = (c.batch_size, c.seq_len)
    batch = {
        "inputs": rng.integers(0, c.model.vocab_size, shape, dtype=np.int32),
        "targets": rng.integers(0, c.model.vocab_size, shape, dtype=np.int32),
        "segment_ids": np.ones(shape, np.int32),
        "positions": np.broadcast_to(np.arange(c.seq_len, dtype=np.int32), shape).copy(),
        "weights": np.ones(shape, np.float32),
    }
    state = training.init(0)
    state, _ = training.train_step(state, batch)  # compile
    arms[chunk] = [training, state, batch, []]
  for _ in tqdm(range(steps), desc="steps"):
    for arm in arms.values():
      training, state, batch, times = arm
      start = time.perf_counter()
      state, metrics = training.train_step(state, batch)
      jax.block_until_ready(metrics["loss"])
      times.append(time.perf_counter() - start)
      arm[1] = state
  return {chunk: float(np.median(arm[3])) for chunk, arm in arms.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/default.py")
  parser.add_argument("--set", action="append", default=[], help="field=value override")
  parser.add_argument("--batch_size", type=int, default=0, help="0: the config's")
  parser.add_argument("--chunks", default="0,256", help="loss_chunk values; 0 is the plain loss")
  parser.add_argument("--topology", default="", help="a TPU topology to compile for")
  parser.add_argument("--h100", type=int, default=0, help="compile for this many H100s")
  parser.add_argument("--cpu_steps", type=int, default=0, help="time this many CPU steps")
  args = parser.parse_args()
  config = load(args.config, args.set)
  if args.batch_size:
    config.batch_size = args.batch_size
  chunks = [int(c) for c in args.chunks.split(",")]
  targets = []
  if args.topology:
    targets.append((args.topology, tpu_devices(args.topology)))
  if args.h100:
    targets.append((f"h100:{args.h100}", gpu_devices(args.h100)))
  for name, devices in targets:
    for chunk in chunks:
      row = compiled_row(config, devices, chunk)
      print(json.dumps({"target": name, "device": devices[0].device_kind, **row}), flush=True)
  if args.cpu_steps:
    times = cpu_times(config, chunks, args.cpu_steps)
    print(json.dumps({"cpu_step_s": times, "ratio_to_plain": {
        c: t / times[chunks[0]] for c, t in times.items()}}))


if __name__ == "__main__":
  main()
