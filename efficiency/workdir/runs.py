"""Reading runs back from their workdir files (summary.json, metrics.jsonl, config.json,
efficiency.json, quant_report*.json), for tables and plots.

Only the workdir contract files are read, so anything here works on runs from any machine.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from efficiency.workdir import files


@dataclass
class Run:
  """One workdir: its name, summary and logged records (train steps and evals)."""

  name: str
  workdir: Path
  summary: dict = field(default_factory=dict)
  records: list[dict] = field(default_factory=list)
  config: dict = field(default_factory=dict)
  efficiency: dict = field(default_factory=dict)
  quant_reports: list[dict] = field(default_factory=list)

  @property
  def technique(self) -> str:
    """The study dimension this run varies: fine-tuning, quantization or architecture."""
    if self.config.get("init_from") and "peft" in self.config:
      return "fine-tuning"
    if self.config.get("quant", {}).get("mode", "none") != "none":
      return "quantization"
    return "architecture"

  def metric(self, name: str, mode: str = "train"):
    """A study metric's value from efficiency.json's `mode` section (None when not measured)."""
    return self.efficiency.get(mode, {}).get("metrics", {}).get(name, {}).get("value")

  @property
  def train_records(self) -> list[dict]:
    return [r for r in self.records if "loss" in r]

  @property
  def eval_records(self) -> list[dict]:
    return [r for r in self.records if "eval_loss" in r]


NONFINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def _number(value):
  """The metrics' "nan", "inf" and "-inf" strings as floats."""
  return NONFINITE.get(value, value) if isinstance(value, str) else value


def load_run(workdir: str | Path, name: str | None = None) -> Run:
  """Loads one workdir; missing files give an empty summary or no records."""
  workdir = Path(workdir)
  metrics_path = workdir / files.METRICS
  records = []
  if metrics_path.exists():
    by_key = {}  # a resumed run may log a step twice; the last record wins
    for line in metrics_path.read_text(errors="replace").splitlines():
      try:
        record = {k: _number(v) for k, v in json.loads(line).items()}
      except json.JSONDecodeError:  # a line a running or crashed run left half-written
        continue
      by_key[(record["step"], "eval_loss" in record)] = record
    records = sorted(by_key.values(), key=lambda r: (r["step"], "eval_loss" in r))
  reports = [json.loads(p.read_text()) for p in sorted(workdir.glob("quant_report*.json"))]
  read = lambda name: files.read_json(workdir / name)
  return Run(name or workdir.name, workdir, read(files.SUMMARY), records, read(files.CONFIG),
             read(files.EFFICIENCY), reports)


def load_sweep(root: str | Path) -> list[Run]:
  """Every point of a sweep root: each subdirectory with a summary.json or metrics.jsonl."""
  root = Path(root)
  dirs = sorted(
      d for d in root.iterdir()
      if d.is_dir() and ((d / files.SUMMARY).exists() or (d / files.METRICS).exists())
  )
  return [load_run(d) for d in dirs]
