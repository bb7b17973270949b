"""Peak FLOP/s per device, the denominator of MFU.

Accelerators use their published dense peak for the compute dtype. A CPU has no such number, so
it is measured once with a large matmul (`benchmarks/cpu_peak.py` runs the same measurement) and
cached in ~/.cache/efficiency/peak_flops.json, keyed by CPU model, device count and jax version.
"""

import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp

# Dense peak FLOP/s by device kind substring: (bfloat16, float32).
ACCELERATOR_PEAKS = {
    "H200": (989e12, 67e12),
    "H100": (989e12, 67e12),
    "A100": (312e12, 19.5e12),
    "TPU v4": (275e12, 275e12 / 2),
    "TPU v5 lite": (197e12, 197e12 / 2),
    "TPU v5p": (459e12, 459e12 / 2),
    "TPU v6": (918e12, 918e12 / 2),
}

CACHE = Path(os.environ.get("EFFICIENCY_CACHE", Path.home() / ".cache" / "efficiency"))


def _cpu_model() -> str:
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def measure_matmul_flops(n: int = 2048, repeats: int = 10, dtype=jnp.float32) -> float:
  """Best FLOP/s of an n x n x n matmul on all local CPU devices at once (the process's peak)."""
  x = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a: a @ a)
  f(x).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    f(x).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best


def cpu_peak_flops(refresh: bool = False) -> float:
  """Measured CPU matmul FLOP/s of this process (all simulated devices share it), cached."""
  key = f"{_cpu_model()}|cores={os.cpu_count()}|jax={jax.__version__}"
  path = CACHE / "peak_flops.json"
  cache = {}
  if path.exists():
    try:
      cache = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
      cache = {}
  if refresh or key not in cache:
    cache[key] = measure_matmul_flops()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cache, indent=2))
  return cache[key]


def peak_flops_total(dtype: str = "float32") -> tuple[float, str]:
  """Peak FLOP/s of all devices of the job together, and how it was obtained."""
  device = jax.devices()[0]
  if device.platform == "cpu":
    per_process = cpu_peak_flops()
    return per_process * jax.process_count(), "measured CPU matmul peak (cached)"
  for name, (bf16, fp32) in ACCELERATOR_PEAKS.items():
    if name.lower() in device.device_kind.lower():
      peak = bf16 if dtype == "bfloat16" else fp32
      return peak * jax.device_count(), f"published {dtype} dense peak of {device.device_kind}"
  return float("nan"), f"unknown peak for {device.device_kind}"


def mfu(model_flops: float, seconds: float, peak_flops: float) -> float:
  """Model FLOPs utilization: model FLOPs (`efficiency.model.flops`) done per second over the
  peak FLOP/s of the devices that did them."""
  return model_flops / seconds / peak_flops
