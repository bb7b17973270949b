"""Attention variants, position encodings and MoE on the same tokens at the CPU default size.

  python benchmarks/attention_variants.py train [--steps 150] [--root /tmp/attention_variants]
  python benchmarks/attention_variants.py table [--root /tmp/attention_variants]
  python benchmarks/attention_variants.py speed [--rounds 5]
  python benchmarks/attention_variants.py nsa [--lengths 128 256 512 1024]

`train` runs train.py once per variant (every attention with rope, every position with gqa, and
gqa + MoE), sequentially, on the default config shortened to --steps, and prints a markdown table
from each run's summary.json (`table` prints it again; rerunning `train` skips finished runs,
since train.py does). `speed` times the jitted train step of every attention variant
in one process, alternating variants round by round so that load from other jobs hits them all
alike, and prints median step times relative to gqa. `nsa` compares NSA with full (gqa)
attention across sequence lengths: compiled train-step temporary memory (XLA's memory analysis)
and interleaved step time, at a fixed number of tokens per batch.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

from configs.default import get_config
from efficiency.config import resolve
from efficiency.sharding.mesh import to_global
from efficiency.train.setup import Training

ROOT = Path(__file__).resolve().parents[1]

ATTENTIONS = ("mha", "mqa", "gqa", "mla", "nsa", "sliding")
POSITIONS = ("rope", "sinusoidal", "learned", "relative", "alibi", "none")


def variants() -> list[tuple[str, dict[str, str]]]:
  """(name, overrides): every attention with rope, every position with gqa, and gqa + MoE."""
  runs = [(f"{a} + rope", {"model.attention": a}) for a in ATTENTIONS]
  runs += [(f"gqa + {p}", {"model.position": p}) for p in POSITIONS if p != "rope"]
  runs.append(("gqa + rope + MoE 8x top-2", {"model.moe.num_experts": "8"}))
  return runs


def train(args) -> None:
  common = {
      "steps": args.steps, "eval_every": 25, "target_loss": args.target, "log_every": 10,
      "checkpoint_every": 10_000,
  }
  for name, overrides in variants():
    workdir = Path(args.root) / name.replace(" + ", "_").replace(" ", "_")
    flags = [f"--config.{k}={v}" for k, v in {**common, **overrides}.items()]
    start = time.time()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), f"--workdir={workdir}", *flags],
        cwd=ROOT, capture_output=True, text=True,
    )
    if proc.returncode:
      print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
      continue
    print(f"{name}: {time.time() - start:.0f} s", file=sys.stderr, flush=True)
  table(args)


def table(args) -> None:
  """The markdown table of every finished run under --root."""
  rows = []
  for name, _ in variants():
    path = Path(args.root) / name.replace(" + ", "_").replace(" ", "_") / "summary.json"
    if path.exists():
      rows.append((name, json.loads(path.read_text())))
  print("| variant | params | final eval loss | tokens_to_target | tokens/s | peak memory (GB) "
        "| KV cache bytes/token | MFU |")
  print("|---|---|---|---|---|---|---|---|")
  for name, s in rows:
    ttt = "-" if s["tokens_to_target"] is None else f"{s['tokens_to_target']:,}"
    print(
        f"| {name} | {s['param_count'] / 1e6:.2f}M | {s['final_eval_loss']:.3f} | {ttt} "
        f"| {s['tokens_per_sec']:,.0f} | {s['peak_memory_bytes'] / 1e9:.2f} "
        f"| {s['kv_cache_bytes_per_token']:,.0f} | {100 * s['mfu']:.1f}% |"
    )


def random_batch(rng, config) -> dict[str, np.ndarray]:
  b, t, v = config.batch_size, config.seq_len, config.model.vocab_size
  tokens = rng.integers(1, v, (b, t + 1)).astype(np.int32)
  return {
      "inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": np.ones((b, t), np.int32),
      "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1)),
      "weights": np.ones((b, t), np.float32),
  }


class Stepper:
  """One variant's compiled train step with its state and a fixed batch."""

  def __init__(self, config):
    config = resolve(config, num_devices=jax.device_count())
    self.training = Training(config)
    self.state = self.training.init(0)
    self.example = random_batch(np.random.default_rng(0), config)
    self.batch = to_global(self.example, self.training.rows_sharding)
    self.compiled, _ = self.training.compile(self.example)
    self.temp_bytes = self.compiled.memory_analysis().temp_size_in_bytes
    self.step()

  def step(self) -> float:
    start = time.perf_counter()
    self.state, metrics = self.compiled(self.state, self.batch)
    jax.block_until_ready(metrics)
    return time.perf_counter() - start


def interleaved(steppers: dict[str, Stepper], rounds: int, steps: int) -> dict[str, float]:
  """Median over rounds of each variant's mean step time; variants alternate every round."""
  times = {name: [] for name in steppers}
  for _ in range(rounds):
    for name, stepper in steppers.items():
      times[name].append(statistics.mean(stepper.step() for _ in range(steps)))
  return {name: statistics.median(t) for name, t in times.items()}


def speed(args) -> None:
  steppers = {}
  for attention in ATTENTIONS:
    config = get_config()
    config.model.attention = attention
    steppers[attention] = Stepper(config)
  config = get_config()
  config.model.moe.num_experts = 8
  steppers["gqa + MoE 8x top-2"] = Stepper(config)
  medians = interleaved(steppers, args.rounds, args.steps)
  print("| variant | step time / gqa | XLA temp memory (MB) |")
  print("|---|---|---|")
  for name, t in medians.items():
    print(f"| {name} | {t / medians['gqa']:.2f} | {steppers[name].temp_bytes / 1e6:.1f} |")


def nsa(args) -> None:
  rows = []
  for seq_len in args.lengths:
    steppers = {}
    for attention in ("gqa", "nsa"):
      config = get_config()
      config.update(seq_len=seq_len, batch_size=max(1, args.tokens // seq_len))
      config.model.attention = attention
      steppers[attention] = Stepper(config)
    medians = interleaved(steppers, args.rounds, args.steps)
    rows.append((seq_len, steppers, medians))
    del steppers
  print("| seq_len | batch | gqa temp MB | nsa temp MB | nsa / gqa memory | nsa / gqa step time |")
  print("|---|---|---|---|---|---|")
  for seq_len, steppers, medians in rows:
    g, s = steppers["gqa"].temp_bytes, steppers["nsa"].temp_bytes
    print(
        f"| {seq_len} | {max(1, args.tokens // seq_len)} | {g / 1e6:.1f} | {s / 1e6:.1f} "
        f"| {s / g:.2f} | {medians['nsa'] / medians['gqa']:.2f} |"
    )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("train")
  p.add_argument("--steps", type=int, default=150)
  p.add_argument("--target", type=float, default=5.8)
  p.add_argument("--root", default="/tmp/attention_variants")
  p = sub.add_parser("table")
  p.add_argument("--root", default="/tmp/attention_variants")
  p = sub.add_parser("speed")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--steps", type=int, default=3)
  p = sub.add_parser("nsa")
  p.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024])
  p.add_argument("--tokens", type=int, default=4096, help="tokens per batch at every length")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--steps", type=int, default=2)
  args = parser.parse_args()
  {"train": train, "table": table, "speed": speed, "nsa": nsa}[args.command](args)


if __name__ == "__main__":
  main()
