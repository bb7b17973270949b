"""The optional Weights & Biases writer (`config.log.wandb`; the `wandb` extra).

It logs what `MetricWriter` writes (step metrics, the summary) to one W&B run whose config is the
run's resolved config. The run's id is kept in WORKDIR/wandb_run.json, so every launch of a
resumed run continues the same W&B run; W&B's files go under WORKDIR/wandb/ (an offline run with
`WANDB_MODE=offline`: `wandb/offline-run-*/run-ID.wandb`, which `wandb sync` uploads later).

Metrics are logged against a `train_step` axis rather than W&B's own step, because a resume
re-logs the steps a crash left unsaved and W&B drops steps lower than ones it has seen.
"""

import math
import secrets
from pathlib import Path
from typing import Any

import ml_collections

from efficiency.workdir import files

STEP_AXIS = "train_step"


def _loggable(value: Any) -> bool:
  return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class WandbWriter:
  """One W&B run for a workdir, resumed by every launch of the run."""

  def __init__(self, workdir: str | Path, config: ml_collections.ConfigDict):
    import wandb

    workdir = Path(workdir)
    log = config.log
    saved = files.read_json(workdir / files.WANDB_RUN)
    run_id = saved.get("id") or secrets.token_hex(4)
    if not saved:
      files.write_json_atomic(workdir / files.WANDB_RUN, {"id": run_id})
    tags = [t.strip() for t in log.wandb_tags.split(",") if t.strip()]
    self.run = wandb.init(
        project=log.wandb_project, name=log.wandb_name or workdir.resolve().name, tags=tags,
        id=run_id, resume="allow", dir=str(workdir), config=config.to_dict(),
    )
    self.run.define_metric(STEP_AXIS)
    self.run.define_metric("*", step_metric=STEP_AXIS)

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    values = {k: v for k, v in metrics.items() if _loggable(v)}
    self.run.log({STEP_AXIS: int(step), **values})

  def write_summary(self, summary: dict[str, Any]) -> None:
    self.run.summary.update({k: v for k, v in summary.items() if v is not None})

  def close(self) -> None:
    self.run.finish()
