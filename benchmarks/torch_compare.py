"""Our train step against an equal-shape plain PyTorch decoder, interleaved in one run.

  python -m benchmarks.torch_compare --torch_python=PYTHON [--shapes 4x256 8x512]
      [--layers scan scan_unrolled unrolled] [--rounds 7] [--steps 3]

PYTHON is an interpreter with torch (kept out of the project's environment: for example
`python -m venv /tmp/torch && /tmp/torch/bin/pip install torch numpy`). For each shape, our
compiled train step (configs/default.py at that shape, `model.attention_impl=auto`) and the
PyTorch step of benchmarks/torch_llama.py (in a worker process, idle while ours runs) take turns,
--steps steps each per round; prints tokens/s of both (median over rounds) and their ratio.
Shapes: `4x256` (4 layers x d_model 256, the default before it was resized for 2-core machines)
and `8x512` (8 layers x d_model 512), both at batch 16 x 128.

`--layers` picks how our layer stack is compiled, one arm each, all taking turns with PyTorch
in the same rounds: `scan` (`model.scan_layers`, the default), `scan_unrolled` (the same scan
with `model.scan_unroll` = every layer, so no loop) and `unrolled` (`scan_layers=False`: one
module per layer). Each row also gives the FLOP rate of both steps, from XLA's count of our
compiled step (layers unrolled; the same math as PyTorch's step), against this machine's
measured float32 matmul peak (`efficiency.metrics.peak`), so a gap reads as kernel speed or
as work done outside the matrix products.
"""

import argparse
import statistics
import subprocess
from pathlib import Path

from benchmarks.attention_variants import Stepper
from configs.default import get_config
from efficiency.metrics.peak import cpu_peak
from efficiency.train.measure import step_flops

ROOT = Path(__file__).resolve().parents[1]
# name: (layers, d_model, heads, kv_heads, d_ff)
SHAPES = {"4x256": (4, 256, 4, 2, 768), "8x512": (8, 512, 8, 4, 1536)}
LAYERS = ("scan", "scan_unrolled", "unrolled")


def torch_worker(python: str, config) -> subprocess.Popen:
  m = config.model
  flags = dict(layers=m.num_layers, d_model=m.d_model, heads=m.num_heads, kv_heads=m.num_kv_heads,
               d_ff=m.d_ff, vocab=m.vocab_size, seq_len=config.seq_len, batch=config.batch_size)
  script = ROOT / "benchmarks" / "torch_llama.py"
  proc = subprocess.Popen(
      [python, str(script), *(f"--{k}={v}" for k, v in flags.items())],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
  )
  ready = proc.stdout.readline()
  if not ready.startswith("ready"):
    raise RuntimeError(f"the torch worker did not start ({python}); is torch installed there?")
  return proc


def shape_config(shape: str, layers_arm: str = "scan"):
  """configs/default.py at one of SHAPES, its layer stack compiled as one of LAYERS."""
  config = get_config()
  layers, d_model, heads, kv_heads, d_ff = SHAPES[shape]
  config.model.update(num_layers=layers, d_model=d_model, num_heads=heads,
                      num_kv_heads=kv_heads, d_ff=d_ff, scan_layers=layers_arm != "unrolled",
                      scan_unroll=layers if layers_arm == "scan_unrolled" else 1)
  return config


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--torch_python", required=True)
  parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
  parser.add_argument("--layers", nargs="+", default=["scan"], choices=LAYERS)
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--steps", type=int, default=3)
  args = parser.parse_args()
  peak = cpu_peak()
  print(f"float32 matmul peak: {peak.flops / 1e9:.1f} GFLOP/s ({peak.key})")
  print("| shape | layers | params | ours tokens/s | PyTorch tokens/s | ours / PyTorch "
        "| ours GFLOP/s | PyTorch GFLOP/s | ours / peak | PyTorch / peak |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for shape in args.shapes:
    ours = {arm: Stepper(shape_config(shape, arm)) for arm in args.layers}
    first = next(iter(ours.values()))
    flops = step_flops(first.training, first.example)
    worker = torch_worker(args.torch_python, first.training.config)
    ours_s, torch_s = {arm: [] for arm in ours}, []
    for _ in range(args.rounds):
      for arm, stepper in ours.items():
        ours_s[arm].append(sum(stepper.step() for _ in range(args.steps)))
      worker.stdin.write(f"{args.steps}\n")
      worker.stdin.flush()
      torch_s.append(float(worker.stdout.readline()))
    worker.stdin.close()
    worker.wait()
    config = first.training.config
    tokens = config.batch_size * config.seq_len  # per step
    params = first.training.param_count()
    torch_time = statistics.median(torch_s) / args.steps
    for arm, times in ours_s.items():
      ours_time = statistics.median(times) / args.steps
      print(f"| {shape} | {arm} | {params / 1e6:.1f}M | {tokens / ours_time:,.0f} "
            f"| {tokens / torch_time:,.0f} | {torch_time / ours_time:.2f} "
            f"| {flops / ours_time / 1e9:.0f} | {flops / torch_time / 1e9:.0f} "
            f"| {flops / ours_time / peak.flops:.0%} | {flops / torch_time / peak.flops:.0%} |",
            flush=True)

if __name__ == "__main__":
  main()
