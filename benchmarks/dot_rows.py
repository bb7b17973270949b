"""What one matrix product of a decode step costs by its row count, and which XLA kernel runs it.

  python -m benchmarks.dot_rows [--k 512] [--n 1536] [--rows 1 2 4 6 8 16]
      [--dtypes float32 bfloat16 int8] [--weights 24] [--rounds 15]

A decode step multiplies [rows, k] activations by every [k, n] kernel: rows is 1 for a batch-1
step, gamma + 1 for a speculative verification, the batch for batched decoding. Each program
here chains `--weights` products over distinct kernels (as many bytes as a model's layers, so no
kernel stays cache-hot the way one repeated product would), unrolled, with no slicing of stacked
weights. Prints per row count and weight dtype (activations float32, products accumulated in
float32): the kernel XLA picked, read off the compiled HLO, microseconds per product, the cost
over the 1-row float32 product, and the rates in GFLOP/s and in GB/s of kernel bytes. The
default shape is the 4 x 512 decoding target's MLP input projection. `int8` is the served AQT
product: each activation row quantized to int8 with its own scale, int8 x int8 accumulated in
int32, then rescaled; with 1 in `--rows` it also runs the one row as two rows, keeping the first
(what efficiency.quant.einsum does on CPU).
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp


def kernel_of(hlo: str) -> str:
  """The library or emitter that runs the product, from the compiled HLO text."""
  if "ynn_fusion" in hlo:
    return "YNNPACK fusion"
  if "onednn" in hlo.lower():
    return "oneDNN"
  matrix_vector = ",1]{1,0} fusion" in hlo or ",1]{1,0} bitcast" in hlo
  name = "XLA dot, matrix-vector" if matrix_vector else "XLA dot"
  if "wrapped_convert" in hlo:
    name += ", kernel converted to a wider type per call"
  return name


def product(x_RK: jax.Array, kernel_KN: jax.Array) -> jax.Array:
  """x_RK @ kernel_KN in float32; an int8 kernel meets int8 rows quantized one scale per row."""
  if kernel_KN.dtype != jnp.int8:
    return jnp.dot(x_RK.astype(kernel_KN.dtype), kernel_KN, preferred_element_type=jnp.float32)
  scale_R1 = jnp.maximum(jnp.max(jnp.abs(x_RK), axis=1, keepdims=True), 1e-9) / 127.0
  q_RK = jnp.round(x_RK / scale_R1).astype(jnp.int8)
  return jnp.dot(q_RK, kernel_KN, preferred_element_type=jnp.int32).astype(jnp.float32) * scale_R1


def chained_products(rows: int, kernels: list[jax.Array], as_two: bool = False):
  """The compiled program of one [rows, k] x [k, n] product per kernel, chained; `as_two`
  computes one row as two rows and keeps the first."""
  k, n = kernels[0].shape

  def one(x_RK, kernel_KN):
    if as_two:
      return product(jnp.concatenate([x_RK, x_RK]), kernel_KN)[:1]
    return product(x_RK, kernel_KN)

  def products(kernels, x_RK):
    acc_RN = jnp.zeros((rows, n), jnp.float32)
    for kernel_KN in kernels:
      acc_RN = acc_RN + one(x_RK + acc_RN[:, :1] * 1e-9, kernel_KN)
    return acc_RN

  x_RK = jnp.ones((rows, k), jnp.float32)
  hlo = jax.jit(one).lower(x_RK, kernels[0]).compile().as_text()
  return jax.jit(products).lower(kernels, x_RK).compile(), x_RK, kernel_of(hlo)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--k", type=int, default=512)
  parser.add_argument("--n", type=int, default=1536)
  parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 6, 8, 16])
  parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                      choices=["float32", "bfloat16", "int8"])
  parser.add_argument("--weights", type=int, default=24)
  parser.add_argument("--rounds", type=int, default=15)
  args = parser.parse_args()
  if min(args.rows) < 1 or args.weights < 1 or args.rounds < 1:
    parser.error(f"--rows {args.rows}, --weights {args.weights} and --rounds {args.rounds} "
                 "must all be >= 1")
  keys = jax.random.split(jax.random.key(0), args.weights)
  base = [jax.random.normal(key, (args.k, args.n), jnp.float32) for key in keys]
  programs = {}
  for dtype in args.dtypes:
    kernels = [(w * 40).clip(-127, 127).astype(dtype) if dtype == "int8" else w.astype(dtype)
               for w in base]
    for rows in args.rows:
      programs[dtype, str(rows)] = (*chained_products(rows, kernels), kernels)
    if dtype == "int8" and 1 in args.rows:
      programs[dtype, "1 as 2"] = (*chained_products(1, kernels, as_two=True), kernels)
  times = {key: [] for key in programs}
  for _ in range(args.rounds):  # the programs take turns, so host drift hits them alike
    for key, (compiled, x_RK, _, kernels) in programs.items():
      start = time.perf_counter()
      jax.block_until_ready(compiled(kernels, x_RK))
      times[key].append((time.perf_counter() - start) / args.weights)
  seconds = {key: statistics.median(t) for key, t in times.items()}
  reference = seconds.get(("float32", "1"), min(seconds.values()))
  print(f"[rows, {args.k}] x [{args.k}, {args.n}], {args.weights} distinct kernels per program, "
        f"medians of {args.rounds}")
  print("| kernel dtype | rows | XLA kernel | us per product | / 1-row float32 | GFLOP/s "
        "| kernel GB/s |")
  print("|---|---|---|---|---|---|---|")
  for (dtype, rows), s in seconds.items():
    flops = 2 * int(rows.split()[0]) * args.k * args.n
    kernel_bytes = args.k * args.n * jnp.dtype(dtype).itemsize
    print(f"| {dtype} | {rows} | {programs[dtype, rows][2]} | {s * 1e6:.0f} | "
          f"{s / reference:.2f} | {flops / s / 1e9:.1f} | {kernel_bytes / s / 1e9:.1f} |")


if __name__ == "__main__":
  main()
