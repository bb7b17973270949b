"""Plots of a sweep root: loss against tokens, and bar charts of the efficiency metrics."""

import math
from pathlib import Path

import matplotlib.pyplot as plt

from efficiency.workdir.runs import Run, load_sweep

EFFICIENCY_METRICS = {
    "tokens_per_sec": "tokens/s",
    "mfu": "MFU",
    "peak_memory_bytes": "peak memory (GB)",
    "wall_time_s": "wall time (s)",
}


def plot_loss_vs_tokens(runs: list[Run], path: Path) -> None:
  """Eval loss against tokens seen per run, the target line, and each run's tokens_to_target."""
  fig, ax = plt.subplots(figsize=(8, 5))
  targets = set()
  for run in runs:
    evals = run.eval_records
    if not evals:
      continue
    (line,) = ax.plot(
        [r["tokens_seen"] for r in evals], [r["eval_loss"] for r in evals], marker=".",
        label=run.name,
    )
    reached = run.summary.get("tokens_to_target")
    if reached is not None:
      ax.axvline(reached, color=line.get_color(), linestyle=":", linewidth=1)
    if run.summary.get("target_loss") is not None:
      targets.add(run.summary["target_loss"])
  for target in sorted(targets):
    ax.axhline(target, color="black", linestyle="--", linewidth=1, label=f"target {target}")
  ax.set_xlabel("tokens seen")
  ax.set_ylabel("eval loss (nats/token)")
  ax.set_title("Eval loss against tokens (dotted: tokens_to_target)")
  ax.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_efficiency(runs: list[Run], path: Path) -> None:
  """One bar chart per efficiency metric, one bar per run."""
  fig, axes = plt.subplots(1, len(EFFICIENCY_METRICS), figsize=(4 * len(EFFICIENCY_METRICS), 4))
  names = [run.name for run in runs]
  for ax, (key, label) in zip(axes, EFFICIENCY_METRICS.items(), strict=True):
    values = [run.summary.get(key) for run in runs]
    values = [math.nan if v is None else v for v in values]
    if key == "peak_memory_bytes":
      values = [v / 1e9 for v in values]
    ax.bar(range(len(runs)), values)
    ax.set_xticks(range(len(runs)), names, rotation=45, ha="right", fontsize="small")
    ax.set_title(label)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_root(root: str | Path, out: str | Path | None = None) -> list[Path]:
  """Writes both plots for a sweep root; returns their paths."""
  runs = load_sweep(root)
  if not runs:
    raise FileNotFoundError(f"{root} holds no runs (no subdirectory with summary.json)")
  out = Path(out) if out else Path(root) / "plots"
  out.mkdir(parents=True, exist_ok=True)
  paths = [out / "loss_vs_tokens.png", out / "efficiency.png"]
  plot_loss_vs_tokens(runs, paths[0])
  plot_efficiency(runs, paths[1])
  return paths
