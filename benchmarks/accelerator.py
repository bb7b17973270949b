"""The study's shapes on one accelerator: tokens/s, MFU and peak memory per attention kernel.

  python -m benchmarks.accelerator [--steps 20] [--batch 16] [--out DIR]
      [--runs 0.5b:xla 0.5b:cudnn 0.5b:pallas_gpu 0.5b:chunked 1.5b:cudnn 1.5b:chunked]

Each run (SIZE:IMPL, SIZE from configs/efficientllm.py) is a fresh process, so its peak device
memory is its own: the train step in bfloat16 compute with float32 master weights (1.5b with
full remat, 0.5b without), --batch rows of 2048 tokens of random data, 3 warm-up steps, then
--steps timed steps. MFU is model FLOPs (efficiency.model.flops) per second over the chip's
published bf16 dense peak. Prints a markdown table, and writes accelerator.json to --out. Sized
to finish within 8 minutes on one H100/H200; an implementation the device cannot run is
reported as such, not timed.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUNS = ("0.5b:xla", "0.5b:cudnn", "0.5b:pallas_gpu", "0.5b:chunked", "1.5b:cudnn",
                "1.5b:chunked")


def one_run(size: str, impl: str, batch: int, steps: int) -> dict:
  """Compiles and times one shape with one attention implementation (in this process)."""
  import jax
  import numpy as np

  from benchmarks.attention_variants import random_batch
  from configs.efficientllm import get_config
  from efficiency.attention import attention_impl
  from efficiency.config import resolve
  from efficiency.errors import ConfigError
  from efficiency.metrics.memory import peak_memory_bytes
  from efficiency.metrics.peak import mfu, peak_flops_total
  from efficiency.model.flops import flops_per_token
  from efficiency.sharding.mesh import to_global
  from efficiency.train.setup import Training

  config = get_config(size)
  config.update(batch_size=batch, steps=steps + 3)
  config.model.update(attention_impl=impl, remat="full" if size != "0.5b" else "none")
  config = resolve(config, num_devices=jax.device_count())
  try:
    picked = attention_impl(config)
  except ConfigError as e:
    return {"size": size, "impl": impl, "skipped": str(e)}
  training = Training(config)
  state = training.init(0)
  host_batch = random_batch(np.random.default_rng(0), config)
  compiled, compile_s = training.compile(host_batch)
  device_batch = to_global(host_batch, training.rows_sharding)
  for _ in range(3):
    state, metrics = compiled(state, device_batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, device_batch)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / steps
  tokens = batch * config.seq_len
  peak, peak_how = peak_flops_total("bfloat16")
  model_flops = flops_per_token(config.model, config.seq_len) * tokens
  return {
      "size": size, "impl": picked, "device": jax.devices()[0].device_kind,
      "batch": batch, "seq_len": config.seq_len, "remat": config.model.remat,
      "step_s": seconds, "tokens_per_s": tokens / seconds, "mfu": mfu(model_flops, seconds, peak),
      "peak_flops": peak, "peak_flops_source": peak_how,
      "peak_memory_gb": peak_memory_bytes()[0] / 1e9,
      "step_temp_gb": compiled.memory_analysis().temp_size_in_bytes / 1e9,
      "compile_s": compile_s, "loss": float(metrics["loss"]),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS))
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--batch", type=int, default=16, help="rows of 2048 tokens per step")
  parser.add_argument("--out", default=os.environ.get("OUT", "."))
  parser.add_argument("--one", help=argparse.SUPPRESS)  # SIZE:IMPL, run in this process
  args = parser.parse_args()
  if args.one:
    size, impl = args.one.split(":")
    print(json.dumps(one_run(size, impl, args.batch, args.steps)))
    return
  results = []
  for run in args.runs:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.accelerator", f"--one={run}", f"--steps={args.steps}",
         f"--batch={args.batch}"],
        cwd=ROOT, capture_output=True, text=True,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {"run": run, "failed": proc.stderr[-1500:]}
    results.append(result)
    print(json.dumps(result), file=sys.stderr, flush=True)
  Path(args.out).mkdir(parents=True, exist_ok=True)
  (Path(args.out) / "accelerator.json").write_text(json.dumps(results, indent=2))
  print("| shape | attention_impl | tokens/s | MFU | peak memory (GB) | step temp (GB) |")
  print("|---|---|---|---|---|---|")
  for r in results:
    if "step_s" in r:
      print(f"| {r['size']} (remat {r['remat']}) | {r['impl']} | {r['tokens_per_s']:,.0f} "
            f"| {100 * r['mfu']:.1f}% | {r['peak_memory_gb']:.1f} | {r['step_temp_gb']:.1f} |")
    else:
      print(f"| {r.get('size', r.get('run'))} | {r.get('impl', '')} | "
            f"{r.get('skipped') or 'failed: ' + r['failed'].splitlines()[-1]} | | | |")


if __name__ == "__main__":
  main()
