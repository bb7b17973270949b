"""The study's PEFT table at CPU scale: each method fine-tunes the same pretrained model.

  python -m benchmarks.peft --init_from=PRETRAINED_DIR --out=DIR [--steps=60] [--rounds=3]
                             [--measure_steps=10] [--methods=full,freeze,lora,...]

Per method: `train.py --config=configs/finetune.py` for `--steps` steps into DIR/METHOD (skipped
if done), then `python -m evals.efficiency --mode=train` on it (AL, AMU), then, in this one
process, all methods' compiled train steps timed in interleaved rounds on one real batch, so the
step-time ratios do not depend on what else the machine runs. Prints a markdown table:
trainable params, optimizer-state bytes, ST = samples / params / s (params: the whole model, as
in the study), AL, the side-by-side AL ratio to full fine-tuning, AMU, final eval loss.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from efficiency.workdir.files import load_config

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("full", "freeze", "lora", "lora_plus", "rslora", "dora", "pissa")


def run(command: list[str]) -> None:
  proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
  if proc.returncode:
    sys.exit(f"error: {' '.join(command)} failed:\n{proc.stderr[-3000:]}")


def finetune(workdir: Path, method: str, init_from: str, steps: int) -> dict:
  summary = workdir / "summary.json"
  if not (summary.exists() and json.loads(summary.read_text())["status"] == "completed"):
    run([sys.executable, "train.py", "--config=configs/finetune.py", f"--workdir={workdir}",
         f"--config.init_from={init_from}", f"--config.peft.method={method}",
         f"--config.steps={steps}", f"--config.eval_every={steps // 2}",
         f"--config.checkpoint_every={steps}"])
  efficiency = workdir / "efficiency.json"
  if not (efficiency.exists() and "train" in json.loads(efficiency.read_text())):
    run([sys.executable, "-m", "evals.efficiency", f"--workdir={workdir}", "--mode=train",
         f"--steps={ARGS.measure_steps}"])
  return {
      "summary": json.loads(summary.read_text()),
      "efficiency": json.loads(efficiency.read_text())["train"],
  }


def side_by_side(workdirs: dict[str, Path], rounds: int, steps: int) -> dict[str, float]:
  """Mean step seconds per method on one real batch, timed in interleaved rounds in this
  process (each method from its workdir's newest parameters)."""
  import jax

  from efficiency.config import resolve
  from efficiency.sharding.mesh import to_global
  from efficiency.train.inputs import load_inputs
  from efficiency.train.setup import Training
  from efficiency.workdir.files import load_config
  from efficiency.workdir.restore import restore

  steps_fns, states, batches, times = {}, {}, {}, {m: [] for m in workdirs}
  local = None
  for method, workdir in workdirs.items():
    config = resolve(load_config(workdir), jax.device_count())
    training = Training(config)
    states[method] = training.init(config.seed, restore(workdir).params)
    local = next(load_inputs(config).train) if local is None else local
    batches[method] = to_global(local, training.rows_sharding)
    steps_fns[method], _ = training.compile(local)
  for _ in range(rounds):
    for method, step_fn in steps_fns.items():
      states[method], _ = step_fn(states[method], batches[method])  # warm
      jax.block_until_ready(states[method])
      start = time.perf_counter()
      for _ in range(steps):
        states[method], _ = step_fn(states[method], batches[method])
      jax.block_until_ready(states[method])
      times[method].append((time.perf_counter() - start) / steps)
  return {m: sum(t) / len(t) for m, t in times.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--init_from", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--measure_steps", type=int, default=10)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--methods", default=",".join(METHODS))
  global ARGS
  ARGS = parser.parse_args()
  methods = ARGS.methods.split(",")
  out = Path(ARGS.out)
  results = {m: finetune(out / m, m, ARGS.init_from, ARGS.steps) for m in methods}
  seconds = side_by_side({m: out / m for m in methods}, ARGS.rounds, steps=3)
  reference = seconds.get("full", next(iter(seconds.values())))
  print("| method | trainable params | % | optimizer state (MB) | ST (samples/param/s) | AL (s) "
        "| AL side by side vs full | AMU (MB) | final eval loss |")
  print("|---|---|---|---|---|---|---|---|---|")
  for m, r in results.items():
    s, e = r["summary"], r["efficiency"]["metrics"]
    al = e["AL"]["value"]
    batch = load_config(out / m).batch_size
    st = batch / s["param_count"] / al
    print(f"| {m} | {s['trainable_param_count']:,} | "
          f"{100 * s['trainable_param_count'] / s['param_count']:.1f} | "
          f"{s['optimizer_state_bytes'] / 1e6:.2f} | {st:.2e} | {al:.3f} | "
          f"{seconds[m] / reference:.2f} | {e['AMU']['value'] / 1e6:.0f} | "
          f"{s['final_eval_loss']:.4f} |")
  (out / "peft_table.json").write_text(json.dumps(
      {m: {**r, "side_by_side_step_s": seconds[m]} for m, r in results.items()}, indent=1))


if __name__ == "__main__":
  main()
