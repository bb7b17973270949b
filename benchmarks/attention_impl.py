"""Attention implementations side by side: train-step time and compiled memory per length.

  python -m benchmarks.attention_impl [--lengths 512 1024 2048 4096] [--tokens 8192]
      [--impls xla chunked] [--rounds 5] [--steps 2] [--block 512]

For each sequence length, every implementation's train step of the default model (at that
length, with --tokens tokens per batch) is compiled in this process; the steps then alternate
round by round so that load from other jobs hits them alike. Prints, per length, XLA's temporary
memory of each compiled step and the median step time relative to the first implementation.
"""

import argparse

from benchmarks.attention_variants import Stepper, interleaved
from configs.default import get_config
from efficiency.attention.kernels import chunked


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
  parser.add_argument("--tokens", type=int, default=8192, help="tokens per batch at every length")
  parser.add_argument("--impls", nargs="+", default=["xla", "chunked"])
  parser.add_argument("--attention", default="gqa")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=2)
  parser.add_argument("--block", type=int, default=chunked.BLOCK, help="chunked block size")
  args = parser.parse_args()
  chunked.BLOCK = args.block
  base = args.impls[0]
  print(f"| seq_len | batch | {' | '.join(f'{i} temp MB' for i in args.impls)} | "
        f"{' | '.join(f'{i} / {base} step time' for i in args.impls[1:])} |")
  print("|---" * (2 + 2 * len(args.impls) - 1) + "|")
  for seq_len in args.lengths:
    steppers = {}
    for impl in args.impls:
      config = get_config()
      config.update(seq_len=seq_len, batch_size=max(1, args.tokens // seq_len))
      config.model.attention = args.attention
      config.model.attention_impl = impl
      steppers[impl] = Stepper(config)
    medians = interleaved(steppers, args.rounds, args.steps)
    memory = " | ".join(f"{steppers[i].temp_bytes / 1e6:.0f}" for i in args.impls)
    ratios = " | ".join(f"{medians[i] / medians[base]:.2f}" for i in args.impls[1:])
    print(f"| {seq_len} | {max(1, args.tokens // seq_len)} | {memory} | {ratios} |", flush=True)
    del steppers


if __name__ == "__main__":
  main()
