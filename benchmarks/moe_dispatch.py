"""MoE dispatch on CPU: dropless (sorted tokens, grouped matmuls) against capacity (GShard
one-hot), side by side at several sequence lengths with the same tokens per batch.

  python benchmarks/moe_dispatch.py [--lengths 128 512 2048] [--tokens 2048] [--experts 8]
      [--rounds 5] [--steps 3]

For each length it compiles the default config's train step with model.moe.num_experts experts
(top-2) in both dispatches, reports XLA's compiled temporary memory and the median over rounds of
the mean step time (arms alternate each round, so load from other jobs hits both alike), and
prints one markdown table.
"""

import argparse

from attention_variants import Stepper, interleaved

from configs.default import get_config


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048])
  parser.add_argument("--tokens", type=int, default=2048, help="tokens per batch")
  parser.add_argument("--experts", type=int, default=8)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=3)
  args = parser.parse_args()
  print("| seq_len | batch | capacity temp MB | dropless temp MB | dropless / capacity memory "
        "| dropless / capacity step time |")
  print("|---|---|---|---|---|---|")
  for seq_len in args.lengths:
    steppers = {}
    for dispatch in ("capacity", "dropless"):
      config = get_config()
      config.update(seq_len=seq_len, batch_size=max(1, args.tokens // seq_len))
      config.model.moe.update(num_experts=args.experts, dispatch=dispatch)
      steppers[dispatch] = Stepper(config)
    medians = interleaved(steppers, args.rounds, args.steps)
    c, d = steppers["capacity"].temp_bytes, steppers["dropless"].temp_bytes
    print(
        f"| {seq_len} | {max(1, args.tokens // seq_len)} | {c / 1e6:.1f} | {d / 1e6:.1f} "
        f"| {d / c:.2f} | {medians['dropless'] / medians['capacity']:.2f} |", flush=True,
    )


if __name__ == "__main__":
  main()
