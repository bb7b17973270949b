"""The memory-plan table (BENCHMARKS.md): the study's shapes on 8, 64 and 256 simulated devices
with two or three meshes each, from `evals.plan` (one process per plan, since the device count
is fixed when jax starts).

  python benchmarks/memory_plan.py [--sizes=0.5b,1.5b,3b] [--devices=8,64,256]
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# devices -> meshes (fsdp, tensor); data takes the rest.
MESHES = {8: [(8, 1), (4, 2)], 64: [(64, 1), (16, 4), (8, 8)], 256: [(256, 1), (64, 4), (32, 8)]}


def plan(size: str, devices: int, fsdp: int, tensor: int) -> dict:
  proc = subprocess.run(
      [sys.executable, "-m", "evals.plan", f"--config=configs/efficientllm.py:{size}",
       f"--devices={devices}", f"--config.mesh.fsdp={fsdp}", f"--config.mesh.tensor={tensor}",
       "--config.mesh.data=-1"],
      cwd=ROOT, capture_output=True, text=True, timeout=3600,
  )
  if proc.returncode:
    return {"error": proc.stderr.strip().splitlines()[-1]}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--sizes", default="0.5b,1.5b,3b")
  parser.add_argument("--devices", default="8,64,256")
  args = parser.parse_args()
  gb = lambda n: f"{n / 1e9:.1f}"
  print("| shape | devices | mesh (data x fsdp x tensor) | params GB | optimizer GB | temp GB | "
        "peak GB | fits 16 / 80 / 141 GB | compile s |")
  print("|---|---|---|---|---|---|---|---|---|")
  for size in args.sizes.split(","):
    for devices in map(int, args.devices.split(",")):
      for fsdp, tensor in MESHES[devices]:
        result = plan(size, devices, fsdp, tensor)
        if "error" in result:
          print(f"| {size} | {devices} | fsdp {fsdp}, tensor {tensor} | {result['error']} |")
          continue
        mesh, b = result["mesh"], result["per_device_bytes"]
        fits = " / ".join("yes" if f else "no" for f in result["fits_on"].values())
        print(f"| {size} | {devices} | {mesh['data']} x {mesh['fsdp']} x {mesh['tensor']} | "
              f"{gb(b['params'])} | {gb(b['optimizer_state'])} | {gb(b['temp'])} | "
              f"{gb(b['peak_estimate'])} | {fits} | {result['compile_time_s']:.0f} |", flush=True)


if __name__ == "__main__":
  main()
