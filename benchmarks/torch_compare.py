"""Our train step against an equal-shape plain PyTorch decoder, interleaved in one run.

  python -m benchmarks.torch_compare --torch_python=PYTHON [--shapes default wide]
      [--rounds 7] [--steps 3]

PYTHON is an interpreter with torch (kept out of the project's environment: for example
`python -m venv /tmp/torch && /tmp/torch/bin/pip install torch numpy`). For each shape, our
compiled train step (configs/default.py at that shape, `model.attention_impl=auto`) and the
PyTorch step of benchmarks/torch_llama.py (in a worker process, idle while ours runs) take turns,
--steps steps each per round; prints tokens/s of both (median over rounds) and their ratio.
Shapes: `4x256` (4 layers x d_model 256, the default before it was resized for 2-core machines)
and `8x512` (8 layers x d_model 512), both at batch 16 x 128.
"""

import argparse
import statistics
import subprocess
from pathlib import Path

from benchmarks.attention_variants import Stepper
from configs.default import get_config

ROOT = Path(__file__).resolve().parents[1]
# name: (layers, d_model, heads, kv_heads, d_ff)
SHAPES = {"4x256": (4, 256, 4, 2, 768), "8x512": (8, 512, 8, 4, 1536)}


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


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--torch_python", required=True)
  parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--steps", type=int, default=3)
  args = parser.parse_args()
  print("| shape | params | ours tokens/s | PyTorch tokens/s | ours / PyTorch |")
  print("|---|---|---|---|---|")
  for shape in args.shapes:
    config = get_config()
    layers, d_model, heads, kv_heads, d_ff = SHAPES[shape]
    config.model.update(num_layers=layers, d_model=d_model, num_heads=heads,
                        num_kv_heads=kv_heads, d_ff=d_ff)
    ours = Stepper(config)
    worker = torch_worker(args.torch_python, config)
    ours_s, torch_s = [], []
    for _ in range(args.rounds):
      ours_s.append(sum(ours.step() for _ in range(args.steps)))
      worker.stdin.write(f"{args.steps}\n")
      worker.stdin.flush()
      torch_s.append(float(worker.stdout.readline()))
    worker.stdin.close()
    worker.wait()
    tokens = args.steps * config.batch_size * config.seq_len
    ours_tps, torch_tps = tokens / statistics.median(ours_s), tokens / statistics.median(torch_s)
    params = ours.training.param_count()
    print(f"| {shape} | {params / 1e6:.1f}M | {ours_tps:,.0f} "
          f"| {torch_tps:,.0f} | {ours_tps / torch_tps:.2f} |", flush=True)


if __name__ == "__main__":
  main()
