"""The files of a workdir (the contract notebooks, sweeps and every tool rely on), and reading
and writing them.

  config.json        the resolved config the run trained with
  metrics.jsonl      one JSON object per logged step (and per evaluation)
  summary.json       kept current during the run (keys: `efficiency.workdir.summary`)
  data_report.json   what data preparation kept and dropped (`data.prepare`)
  tensorboard/       TensorBoard event files of the metrics
  checkpoints/       Orbax checkpoints, one directory per saved step
  efficiency.json    the study's metrics, one section per mode (`evals.efficiency`)
  quant_report.json  a quantized export's size, quality and speed (`evals.quantize`)
"""

import json
import os
from pathlib import Path

import ml_collections

from efficiency.errors import MissingPathError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
DATA_REPORT = "data_report.json"
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"
EFFICIENCY = "efficiency.json"
QUANT_REPORT = "quant_report.json"


def write_json_atomic(path: Path, obj: dict) -> None:
  """Writes JSON to a temp file and renames it, so readers never see a half-written file."""
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
  os.replace(tmp, path)


def read_json(path: Path) -> dict:
  """The JSON object in `path`, or {} when there is no such file."""
  return json.loads(path.read_text()) if path.exists() else {}


def load_config(
    workdir: str | Path, field: str = "workdir", hint: str = "is it a train.py workdir?"
) -> ml_collections.ConfigDict:
  """The config a run in `workdir` trained with. `field` and `hint` word the error when there
  is none: `{field}='DIR' has no config.json; {hint}`."""
  path = Path(workdir) / CONFIG
  if not path.is_file():
    raise MissingPathError(f"{field}={str(workdir)!r} has no {CONFIG}; {hint}")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def checkpoint_steps(workdir: str | Path) -> list[int]:
  """The steps saved under WORKDIR/checkpoints, oldest first."""
  path = Path(workdir) / CHECKPOINTS
  return sorted(int(d.name) for d in path.iterdir() if d.name.isdigit()) if path.is_dir() else []
