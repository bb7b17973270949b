"""Sizes the default job: model shapes trained on the same compute (FLOPs or time) on the default
corpus.

  python benchmarks/default_job.py speed [--rounds 5] [--root /tmp/default_job]
  python benchmarks/default_job.py train [--budget 1e13 | --seconds 250] [--root /tmp/default_job]
  python benchmarks/default_job.py table [--root /tmp/default_job] [--target 4.2]

`train` runs train.py once per shape, sequentially, on configs/default.py with the shape's model
fields and as many steps of the default batch as the budget of training FLOPs
(`flops_per_token * tokens`, efficiency.model.flops) allows. FLOPs are the budget because wall
time on a shared machine is noisy; warmup and eval interval are 1/12 of the run each, so every run
has the same schedule in relative terms. With `--seconds` the budget is training time instead:
each shape gets as many steps as its step time in `speed.json` (measured first, on the machine
the default must fit) allows in that many seconds.

`speed` times each shape's compiled train step in one process, alternating shapes round by round
so that load from other jobs hits them all alike, and saves the median step times: their ratios
to the reference shape times its step time on a quiet machine (`--reference-step-s`, from
BENCHMARKS.md) estimate each run's training time on a quiet machine, since small shapes do fewer
FLOP/s. `table` prints the markdown table from the runs' summary.json and metrics.jsonl: FLOPs,
wall time with the load average around the run, training time, tokens to `--target` read off the
eval curve (the first eval at or below it), and the eval loss at two thirds of the run (the
`target_loss` for the chosen shape). Rerunning `train` skips finished runs.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

from configs.default import get_config
from efficiency.config import resolve
from efficiency.model.flops import flops_per_token
from efficiency.sharding.mesh import to_global
from efficiency.train.setup import Training

ROOT = Path(__file__).resolve().parents[1]

# name -> model fields; head_dim 64 (d96: 48), d_ff 3 x d_model.
SHAPES = {
    "2L d96": dict(num_layers=2, d_model=96, num_heads=2, num_kv_heads=1, d_ff=288),
    "2L d128": dict(num_layers=2, d_model=128, num_heads=2, num_kv_heads=1, d_ff=384),
    "4L d128": dict(num_layers=4, d_model=128, num_heads=2, num_kv_heads=1, d_ff=384),
    "3L d192": dict(num_layers=3, d_model=192, num_heads=3, num_kv_heads=1, d_ff=576),
    "4L d256": dict(num_layers=4, d_model=256, num_heads=4, num_kv_heads=2, d_ff=768),
}
REFERENCE = "4L d256"  # the former default: BENCHMARKS.md has its step time on a quiet machine


def shape_config(name: str):
  """configs/default.py with the shape's model fields."""
  config = get_config()
  config.model.update(SHAPES[name])
  return config


def random_batch(rng: np.random.Generator, config) -> dict[str, np.ndarray]:
  b, t, v = config.batch_size, config.seq_len, config.model.vocab_size
  tokens = rng.integers(1, v, (b, t + 1)).astype(np.int32)
  return {
      "inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": np.ones((b, t), np.int32),
      "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1)),
      "weights": np.ones((b, t), np.float32),
  }


def speed(args) -> dict[str, float]:
  """Median step time of every shape, interleaved; saved as speed.json in the root."""
  steppers = {}
  for name in args.shapes or SHAPES:
    config = resolve(shape_config(name), num_devices=jax.device_count())
    training = Training(config)
    batch = random_batch(np.random.default_rng(0), config)
    compiled, _ = training.compile(batch)
    steppers[name] = [compiled, training.init(0), to_global(batch, training.rows_sharding)]
  times = {name: [] for name in steppers}
  for _ in range(args.rounds + 1):  # the first round warms up and is dropped
    for name, stepper in steppers.items():
      compiled, state, batch = stepper
      start = time.perf_counter()
      for _ in range(args.steps):
        state, metrics = compiled(state, batch)
      jax.block_until_ready(metrics)
      stepper[1] = state
      times[name].append((time.perf_counter() - start) / args.steps)
  medians = {name: statistics.median(t[1:]) for name, t in times.items()}
  root = Path(args.root)
  root.mkdir(parents=True, exist_ok=True)
  (root / "speed.json").write_text(json.dumps({"step_s": medians, "loadavg": os.getloadavg()}))
  base = get_config()
  print("| shape | step time (s) | model GFLOP/s |")
  print("|---|---|---|")
  for name, t in medians.items():
    per_token = flops_per_token(shape_config(name).model, base.seq_len)
    per_step = per_token * base.batch_size * base.seq_len
    print(f"| {name} | {t:.3f} | {per_step / t / 1e9:.0f} |")
  return medians


def saved_step_s(root: Path) -> dict[str, float] | None:
  """The step times `speed` saved in the root (None before it ran)."""
  path = root / "speed.json"
  return json.loads(path.read_text())["step_s"] if path.exists() else None


def plan(args) -> dict[str, dict]:
  """Per shape: its flag overrides, FLOPs per token and the steps that spend the budget
  (training FLOPs, or with `--seconds` training time at the measured step times)."""
  base = get_config()
  step_s = saved_step_s(Path(args.root)) if args.seconds else {}
  if step_s is None:
    sys.exit(f"--seconds needs {args.root}/speed.json: run `default_job.py speed --root "
             f"{args.root}` first")
  runs = {}
  for name, fields in SHAPES.items():
    if args.shapes and name not in args.shapes:
      continue
    per_token = flops_per_token(shape_config(name).model, base.seq_len)
    if args.seconds:
      if name not in step_s:
        sys.exit(f"speed.json has no step time for {name!r}: run `speed` with that shape")
      steps = round(args.seconds / step_s[name])
    else:
      steps = round(args.budget / (per_token * base.batch_size * base.seq_len))
    interval = max(10, round(steps / 12))
    overrides = {f"model.{k}": v for k, v in fields.items()}
    overrides.update(
        {"steps": steps, "eval_every": interval, "optimizer.warmup_steps": interval,
         "checkpoint_every": steps}
    )
    runs[name] = {"overrides": overrides, "flops_per_token": per_token, "steps": steps}
  return runs


def quiet_step_s(args) -> dict[str, float] | None:
  """Step time of every shape on a quiet machine of this class: its interleaved ratio to the
  reference shape (speed.json) times the reference's quiet step time (`--reference-step-s`)."""
  step_s = saved_step_s(Path(args.root))
  if args.seconds or not step_s or REFERENCE not in step_s:  # this machine's times, or none
    return None
  return {name: args.reference_step_s * t / step_s[REFERENCE] for name, t in step_s.items()}


def workdir_of(root: Path, name: str) -> Path:
  return root / name.replace(" ", "_")


def train(args) -> None:
  root = Path(args.root)
  for name, run in plan(args).items():
    if args.shapes and name not in args.shapes:
      continue
    workdir = workdir_of(root, name)
    flags = [f"--config.{k}={v}" for k, v in run["overrides"].items()]
    load_before = os.getloadavg()[0]
    start = time.time()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), f"--workdir={workdir}", *flags],
        cwd=ROOT, capture_output=True, text=True,
    )
    seconds = time.time() - start
    if proc.returncode:
      print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
      continue
    load = {"before": load_before, "after": os.getloadavg()[0], "elapsed_s": seconds}
    (workdir / "load.json").write_text(json.dumps(load))
    last = proc.stdout.strip().splitlines()[-1]
    print(f"{name}: {run['steps']} steps in {seconds:.0f} s; {last}", flush=True)
  table(args)


def eval_curve(workdir: Path) -> list[tuple[int, int, float]]:
  """(step, tokens_seen, eval_loss) of every evaluation of a run."""
  curve = []
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    row = json.loads(line)
    if "eval_loss" in row:
      curve.append((row["step"], row["tokens_seen"], row["eval_loss"]))
  return curve


def table(args) -> None:
  root = Path(args.root)
  budget = f"{args.seconds:g} s of training" if args.seconds else f"{args.budget:.2e} FLOPs"
  print(f"budget {budget}; tokens to target {args.target}\n")
  print("| shape | params | steps | tokens | FLOPs | wall time (s) | load avg | quiet training "
        "(s, est.) | training (s) | final eval loss | tokens to target | eval loss at 2/3 |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  quiet = quiet_step_s(args)
  for name, run in plan(args).items():
    workdir = workdir_of(root, name)
    path = workdir / "summary.json"
    if not path.exists():
      print(f"| {name} | not run |")
      continue
    summary = json.loads(path.read_text())
    curve = eval_curve(workdir)
    reached = next((tokens for _, tokens, loss in curve if loss <= args.target), None)
    at_two_thirds = min(curve, key=lambda c: abs(c[0] - 2 * run["steps"] / 3))
    load_path = workdir / "load.json"
    load = json.loads(load_path.read_text()) if load_path.exists() else {}
    load_text = f"{load['before']:.1f} / {load['after']:.1f}" if load else "n/a"
    flops = run["flops_per_token"] * summary["tokens_seen"]
    quiet_text = f"{quiet[name] * summary['steps']:.0f}" if name in (quiet or {}) else "n/a"
    print(
        f"| {name} | {summary['param_count'] / 1e6:.2f}M | {summary['steps']} "
        f"| {summary['tokens_seen'] / 1e6:.2f}M | {flops:.2e} | {summary['wall_time_s']:.0f} "
        f"| {load_text} | {quiet_text} | {summary['tokens_seen'] / summary['tokens_per_sec']:.0f} "
        f"| {summary['final_eval_loss']:.3f} "
        f"| {'not reached' if reached is None else f'{reached / 1e6:.2f}M'} "
        f"| {at_two_thirds[2]:.3f} (step {at_two_thirds[0]}) |"
    )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("command", choices=("speed", "train", "table"))
  parser.add_argument("--shapes", nargs="*", choices=tuple(SHAPES), help="only these shapes")
  parser.add_argument("--budget", type=float, default=1e13, help="training FLOPs per run")
  parser.add_argument(
      "--seconds", type=float, default=0.0,
      help="training seconds per run at speed.json's step times, in place of --budget",
  )
  parser.add_argument(
      "--reference-step-s", type=float, default=0.383,
      help=f"train step time of {REFERENCE} on a quiet machine of this class (BENCHMARKS.md)",
  )
  parser.add_argument("--rounds", type=int, default=5, help="speed: interleaved rounds")
  parser.add_argument("--steps", type=int, default=5, help="speed: steps per shape and round")
  parser.add_argument("--root", default="/tmp/default_job", help="parent of the runs' workdirs")
  parser.add_argument("--target", type=float, default=4.2, help="eval loss for tokens to target")
  args = parser.parse_args()
  {"speed": speed, "train": train, "table": table}[args.command](args)


if __name__ == "__main__":
  main()
