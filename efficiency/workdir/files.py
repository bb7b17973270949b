"""The files of a workdir (the contract notebooks, sweeps and every tool rely on), and reading
and writing them.

  config.json        the resolved config the run trained with
  metrics.jsonl      one JSON object per logged step (and per evaluation)
  summary.json       kept current during the run (keys: `efficiency.workdir.summary`)
  data_report.json   what data preparation kept and dropped (`data.prepare`)
  tensorboard/       TensorBoard event files of the metrics, and profile traces under
                     tensorboard/plugins/profile/<run>/ (config.profile)
  profile_summary.json  the profile window's XLA op time by group (efficiency.metrics.profile)
  wandb_run.json     the Weights & Biases run id a resume continues (config.log.wandb)
  wandb/             W&B's own files (offline runs with WANDB_MODE=offline)
  checkpoints/       Orbax checkpoints, one directory per saved step
  checkpoints_corrupt/  checkpoints a resume could not restore, moved aside (train.checkpoint)
  lock               the running owner's pid and host (efficiency.workdir.lock)
  efficiency.json    the study's metrics, one section per mode (`evals.efficiency`)
  quant_report.json  a quantized export's size, quality and speed (`evals.quantize`)
"""

import json
import os
from pathlib import Path

import ml_collections

from efficiency.errors import ConfigError, MissingPathError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
DATA_REPORT = "data_report.json"
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"
EFFICIENCY = "efficiency.json"
QUANT_REPORT = "quant_report.json"
PROFILE_SUMMARY = "profile_summary.json"
WANDB_RUN = "wandb_run.json"


def make_workdir(workdir: str | Path, field: str = "workdir") -> Path:
  """`workdir` as a writable directory, created if needed; a ConfigError naming the path if it
  is empty, a file, under a file, or cannot be created or written."""
  if not str(workdir).strip():
    raise ConfigError(f"--{field} is empty; give a directory for the run's files")
  path = Path(workdir)
  if path.exists() and not path.is_dir():
    raise ConfigError(f"--{field}={str(path)!r} is a file, not a directory")
  try:
    path.mkdir(parents=True, exist_ok=True)
  except (FileExistsError, NotADirectoryError):
    raise ConfigError(
        f"--{field}={str(path)!r} cannot be created: a parent of it is a file"
    ) from None
  except OSError as e:
    raise ConfigError(f"--{field}={str(path)!r} cannot be created: {e.strerror}") from None
  if not os.access(path, os.W_OK | os.X_OK):
    raise ConfigError(f"--{field}={str(path)!r} is not writable")
  return path


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
