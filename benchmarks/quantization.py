"""Bit-width quantization: served bf16 / int8 / int4 weights, and quantized training curves.

  python benchmarks/quantization.py --workdir=DIR [--group_size=0] [--decode_tokens=32]
                                    [--rounds=5] [--float_run=DIR --quant_runs=MODE=DIR,...]

Part 1 converts DIR's checkpoint (evals.quantize) and measures, side by side in one process,
for bf16, int8 and int4 weights, each with the float and the quantized embedding table
(`+table`: quant.embedding int8 / int4): weight bytes, eval loss (change vs bf16), next-token
accuracy, MCR (size ratio vs bf16 x accuracy ratio) and greedy CPU decode tokens/s (ratio vs
bf16).
Part 2 reads train.py runs' metrics.jsonl: eval loss of each quantized run against the float
run at equal tokens, and tokens_to_target, printed as markdown tables.
"""

import argparse
import json
from pathlib import Path

import jax.numpy as jnp
from tqdm import tqdm

from efficiency.serving import export
from efficiency.serving.bench import METHOD, decode_speed, quality
from efficiency.train.inputs import load_inputs
from efficiency.workdir import files
from efficiency.workdir.restore import restore


def served_table(
    workdir: str, group_size: int, new_tokens: int, prompt_len: int, rounds: int
) -> str:
  trained = restore(workdir)
  batches = load_inputs(trained.config, train=False).eval_batches
  prompt_BP = jnp.asarray(batches[0]["inputs"][:1, :prompt_len])
  models = {
      "bf16": export.cast_float(trained, "bfloat16"),
      "int8": export.convert(trained, 8, "bfloat16"),
      "int8+table": export.convert(trained, 8, "bfloat16", embedding="int8"),
      "int4": export.convert(trained, 4, "bfloat16", group_size),
      "int4+table": export.convert(trained, 4, "bfloat16", group_size, "int4"),
  }
  rows = {name: dict(bytes=export.weight_bytes(m.params), **quality(m, batches), tokens_per_s=0)
          for name, m in models.items()}
  for _ in tqdm(range(rounds), desc="decode rounds"):  # interleaved: shared-CPU noise hits all
    for name, m in models.items():
      speed = decode_speed(m.model, m.params, prompt_BP, new_tokens)
      rows[name]["tokens_per_s"] = max(rows[name]["tokens_per_s"], speed["tokens_per_s"])
  base = rows["bf16"]
  lines = [
      f"step {trained.step}; decode: batch 1, prompt {prompt_len}, {new_tokens} new tokens, "
      f"best of {rounds} interleaved rounds x 3 runs; {METHOD}",
      "",
      "| weights | bytes | size ratio | eval loss | change | accuracy | MCR | decode tok/s "
      "| vs bf16 |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for name, r in rows.items():
    size = base["bytes"] / r["bytes"]
    lines.append(
        f"| {name} | {r['bytes']:,} | {size:.2f}x | {r['eval_loss']:.4f} | "
        f"{r['eval_loss'] - base['eval_loss']:+.4f} | {r['accuracy']:.4f} | "
        f"{size * r['accuracy'] / base['accuracy']:.2f} | {r['tokens_per_s']:.0f} | "
        f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x |"
    )
  return "\n".join(lines)


def _evals(workdir: str) -> dict[int, float]:
  lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return {m["tokens_seen"]: m["eval_loss"] for m in map(json.loads, lines) if "eval_loss" in m}


def curves_table(float_run: str, quant_runs: dict[str, str], target: float) -> str:
  runs = {"none": float_run, **quant_runs}
  curves = {mode: _evals(d) for mode, d in runs.items()}
  tokens = sorted(set.intersection(*(set(c) for c in curves.values())))
  lines = ["| tokens | " + " | ".join(curves) + " |", "|---" * (len(curves) + 1) + "|"]
  for t in tokens:
    lines.append(f"| {t:,} | " + " | ".join(f"{c[t]:.4f}" for c in curves.values()) + " |")
  lines += ["", f"| mode | final eval loss | vs float | tokens_to_target ({target}) |",
            "|---|---|---|---|"]
  last = tokens[-1] if tokens else None
  for mode, c in curves.items():
    reached = next((t for t in sorted(c) if c[t] <= target), None)
    rel = (c[last] / curves["none"][last] - 1) * 100 if last is not None else float("nan")
    lines.append(f"| {mode} | {c[last]:.4f} | {rel:+.2f}% | "
                 f"{reached if reached is None else f'{reached:,}'} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--group_size", type=int, default=0)
  parser.add_argument("--decode_tokens", type=int, default=32)
  parser.add_argument("--prompt_len", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--float_run", default="")
  parser.add_argument("--quant_runs", default="", help="MODE=DIR,... of quantized train.py runs")
  args = parser.parse_args()
  print(served_table(args.workdir, args.group_size, args.decode_tokens, args.prompt_len,
                     args.rounds))
  if args.float_run:
    runs = dict(item.split("=", 1) for item in args.quant_runs.split(",") if item)
    target = files.load_config(args.float_run).target_loss
    print()
    print(curves_table(args.float_run, runs, target))


if __name__ == "__main__":
  main()
