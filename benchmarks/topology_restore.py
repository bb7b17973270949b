"""Restore time against checkpoint size when the mesh changes (BENCHMARKS.md, "Resuming on
another topology"): a train state saved on 8 CPU devices (data 2, fsdp 2, tensor 2) is restored
onto 8 (same mesh), 4 (fsdp 4) and 1 device, each in a fresh process (the device count is fixed
when jax starts).

  python benchmarks/topology_restore.py [--shapes=default,8x512,16x1024]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"default": (4, 256, 768), "8x512": (8, 512, 2048), "16x1024": (16, 1024, 4096)}
MESHES = {8: {"data": 2, "fsdp": 2, "tensor": 2}, 4: {"data": 1, "fsdp": 4}, 1: {"data": 1}}


def _config(shape: str, devices: int):
  from configs.default import get_config
  from efficiency.config import resolve

  layers, d_model, d_ff = SHAPES[shape]
  config = get_config()
  config.model.update(num_layers=layers, d_model=d_model, d_ff=d_ff, num_heads=8, num_kv_heads=4)
  config.mesh.update(MESHES[devices])
  return resolve(config, devices)


def child(mode: str, shape: str, devices: int, directory: str) -> dict:
  import jax
  import orbax.checkpoint as ocp

  from efficiency.train import checkpoint
  from efficiency.train.setup import Training

  training = Training(_config(shape, devices))
  if mode == "save":
    checkpoint.save_state(directory, 1, training.init(seed=0))
    size = sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())
    return {"bytes": size}
  start = time.perf_counter()
  with ocp.CheckpointManager(Path(directory) / "checkpoints") as manager:
    restored = manager.restore(1, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(training.abstract_state)))
  jax.block_until_ready(restored["state"])
  return {"restore_s": time.perf_counter() - start}


def _run(mode: str, shape: str, devices: int, directory: str) -> dict:
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  proc = subprocess.run(
      [sys.executable, __file__, "--child", mode, shape, str(devices), directory],
      cwd=ROOT, env=env, capture_output=True, text=True, check=True,
  )
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
  if len(sys.argv) > 1 and sys.argv[1] == "--child":
    sys.path.insert(0, str(ROOT))
    print(json.dumps(child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])))
    return
  parser = argparse.ArgumentParser()
  parser.add_argument("--shapes", default="default,8x512,16x1024")
  args = parser.parse_args()
  print("| shape | checkpoint MB | restore onto 8 devices, same mesh (s) | onto 4, fsdp 4 (s) | "
        "onto 1 (s) |")
  print("|---|---|---|---|---|")
  for shape in args.shapes.split(","):
    with tempfile.TemporaryDirectory() as directory:
      size = _run("save", shape, 8, directory)["bytes"]
      times = [_run("restore", shape, n, directory)["restore_s"] for n in (8, 4, 1)]
    print(f"| {shape} | {size / 1e6:.0f} | " + " | ".join(f"{t:.2f}" for t in times) + " |",
          flush=True)


if __name__ == "__main__":
  main()
