"""Measures this machine's CPU matmul peak, the MFU denominator train.py uses on CPU.

  python benchmarks/cpu_peak.py [--refresh]

Prints FLOP/s of float32 n x n matmuls at several sizes and the cached value MFU uses.
"""

import argparse

import jax
import jax.numpy as jnp

from efficiency.metrics.peak import cpu_peak_flops, measure_matmul_flops


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--refresh", action="store_true", help="re-measure the cached peak")
  args = parser.parse_args()
  print(f"jax {jax.__version__}, devices: {jax.devices()}")
  for n in (512, 1024, 2048, 4096):
    for dtype in (jnp.float32, jnp.bfloat16):
      flops = measure_matmul_flops(n=n, repeats=5, dtype=dtype)
      print(f"matmul n={n:5d} {jnp.dtype(dtype).name:9s} {flops / 1e9:8.1f} GFLOP/s")
  print(f"cached peak used for MFU: {cpu_peak_flops(refresh=args.refresh) / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
  main()
