"""Measures this machine's CPU matmul peak, the MFU denominator train.py uses on CPU.

  python benchmarks/cpu_peak.py [--refresh]

Prints the cache key (what decides the peak), FLOP/s of n x n matmuls at several sizes and
dtypes, and the peak MFU uses: cached when measured on a quiet machine, else measured under load
and marked as such.
"""

import argparse
import json

import jax
import jax.numpy as jnp

from efficiency.metrics.peak import cpu_key, cpu_peak, loadavg, measure_matmul_flops, usable_cores


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--refresh", action="store_true", help="re-measure the cached peak")
  args = parser.parse_args()
  print(f"jax {jax.__version__}, devices: {jax.devices()}")
  print(f"key: {cpu_key()}")
  print(f"usable cores: {usable_cores()}, 1-minute load average: {loadavg()}")
  for n in (512, 1024, 2048, 4096):
    for dtype in (jnp.float32, jnp.bfloat16):
      flops = measure_matmul_flops(n=n, repeats=5, dtype=dtype)
      print(f"matmul n={n:5d} {jnp.dtype(dtype).name:9s} {flops / 1e9:8.1f} GFLOP/s")
  peak = cpu_peak(refresh=args.refresh)
  print(f"peak used for MFU: {peak.flops / 1e9:.1f} GFLOP/s ({peak.source})")
  print(f"measurement: {json.dumps(peak.details)}")


if __name__ == "__main__":
  main()
