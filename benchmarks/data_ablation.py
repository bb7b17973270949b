"""Tokens to target for data setups: baseline, filters, curriculum, both, sequence-length warmup.

  python benchmarks/data_ablation.py --out=DIR [--steps=240] [--eval_every=20] [--seeds=0,1]
                                     [--targets=5.0,4.8,4.6] [--shuffle_window=1024]

Runs train.py once per setup and seed (same model, optimizer, eval batches; runs are resumed
or skipped if DIR already holds them), all with rows shuffled in windows of `--shuffle_window`
rows (the default config's 1024: 64 steps, which blurs a curriculum's order at that scale; 128
keeps the order but makes batches of few documents, which trains far worse). Then prints, per
setup and seed, tokens_to_target for each target (from the run's eval losses in
metrics.jsonl) and the final eval loss.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILTERS = ["--config.data.filters=length,exact_dedup,near_dup,quality"]
CURRICULUM = ["--config.data.curriculum.difficulty=compression"]
SETUPS = {
    "baseline": [],
    "filters": FILTERS,
    "curriculum": CURRICULUM,
    "filters+curriculum": FILTERS + CURRICULUM,
    "seq_len_warmup": ["--config.data.seq_len_warmup.start=16",
                       "--config.data.seq_len_warmup.steps=60"],
}


def tokens_to(metrics: list[dict], target: float) -> int | None:
  """tokens_seen at the first eval at or below `target`."""
  return next((m["tokens_seen"] for m in metrics if m.get("eval_loss", 1e9) <= target), None)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--steps", type=int, default=240)
  parser.add_argument("--eval_every", type=int, default=20)
  parser.add_argument("--seeds", default="0,1")
  parser.add_argument("--targets", default="5.0,4.8,4.6")
  parser.add_argument("--setups", default=",".join(SETUPS))
  parser.add_argument("--shuffle_window", type=int, default=1024)
  args = parser.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  targets = [float(t) for t in args.targets.split(",")]
  setups = args.setups.split(",")
  common = [f"--config.steps={args.steps}", f"--config.eval_every={args.eval_every}",
            f"--config.checkpoint_every={args.steps}", "--config.log_every=20",
            f"--config.data.shuffle_window={args.shuffle_window}"]
  for seed in seeds:  # all setups of one seed first, so a cut-short sweep still covers them all
    for name in setups:
      workdir = Path(args.out) / f"{name}-seed{seed}"
      cmd = [sys.executable, "train.py", f"--workdir={workdir}", f"--config.seed={seed}",
             *common, *SETUPS[name]]
      print(" ".join(cmd[1:]), flush=True)
      subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
  print("\n| setup | seed | final eval loss | " + " | ".join(f"tokens to {t}" for t in targets)
        + " |")
  print("|---|---|---|" + "---|" * len(targets))
  for name in setups:
    for seed in seeds:
      workdir = Path(args.out) / f"{name}-seed{seed}"
      metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
      evals = [m for m in metrics if "eval_loss" in m]
      cells = [tokens_to(evals, t) for t in targets]
      print(f"| {name} | {seed} | {evals[-1]['eval_loss']:.4f} | "
            + " | ".join("not reached" if c is None else f"{c:,}" for c in cells) + " |")


if __name__ == "__main__":
  main()
