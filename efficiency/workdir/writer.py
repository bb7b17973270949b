"""Run outputs: metrics.jsonl (one object per logged step), summary.json and TensorBoard events."""

import json
import math
import os
from pathlib import Path
from typing import Any

from absl import logging
from tensorboardX import SummaryWriter

from efficiency.workdir import files


def _clean(value: Any) -> Any:
  """JSON-safe: NaN and infinities become the strings "nan", "inf" and "-inf" (what
  `efficiency.workdir.runs` reads back as floats), numpy scalars become Python numbers."""
  if hasattr(value, "item"):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


class MetricWriter:
  """Appends step metrics to metrics.jsonl and TensorBoard, and hands them and the summary to
  `tracker` (an experiment tracker such as `WandbWriter`) if given; only process 0 writes."""

  def __init__(self, workdir: str | Path, enabled: bool = True, tracker: Any = None):
    self.workdir = Path(workdir)
    self.enabled = enabled
    self.tracker = tracker if enabled else None
    self._jsonl = None
    self._tb = None
    if enabled:
      self.workdir.mkdir(parents=True, exist_ok=True)
      self._jsonl = open(self.workdir / files.METRICS, "a", buffering=1)  # noqa: SIM115
      self._tb = SummaryWriter(str(self.workdir / files.TENSORBOARD))

  def drop_after(self, step: int) -> None:
    """Removes records past `step`: a resumed run rewrites what a crash left unsaved."""
    if not self.enabled:
      return
    path = self.workdir / files.METRICS
    self._jsonl.close()
    kept = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        logging.warning("Dropping line %d of %s: not a whole JSON record (%r).", number, path,
                        line[:80])
        continue
      if record["step"] <= step:
        kept.append(line)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)
    self._jsonl = open(path, "a", buffering=1)  # noqa: SIM115

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _clean(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    for name, value in metrics.items():
      if isinstance(value, int | float):
        self._tb.add_scalar(name, value, step)
    if self.tracker is not None:
      self.tracker.write(step, metrics)

  def write_summary(self, summary: dict[str, Any]) -> None:
    if self.enabled:
      files.write_json_atomic(
          self.workdir / files.SUMMARY, {k: _clean(v) for k, v in summary.items()}
      )
    if self.tracker is not None:
      self.tracker.write_summary(summary)

  def flush(self) -> None:
    if self.enabled:
      self._jsonl.flush()
      self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
    if self.tracker is not None:
      self.tracker.close()
