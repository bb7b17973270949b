"""Sweeps: one train.py process per point, in ROOT/<point-name>/, then a results table.

A sweep file defines `get_sweep()` returning a dict with
  base:      the config, as `--config` takes it ("configs/default.py" or "configs/x.py:arg");
  grid:      {field: [values, ...]}, expanded as a cartesian product (may be empty);
  points:    optional list of {field: value} dicts, added after the grid points;
  overrides: optional {field: value} applied to every point.
A point's name is its overrides, "attention-mla__position-rope" style. A rerun skips points whose
summary.json says completed; a failed point is reported and does not stop the others.
"""

import csv
import itertools
import re
import runpy
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from efficiency.errors import ConfigError, MissingPathError
from efficiency.workdir.runs import load_run
from efficiency.workdir.summary import PER_SOURCE_KEYS, RESULT_KEYS

ROOT = Path(__file__).resolve().parents[1]  # where train.py is


@dataclass(frozen=True)
class Point:
  """One run of a sweep: its name and its config overrides."""

  name: str
  overrides: dict


def _format_value(value) -> str:
  return str(value).lower() if isinstance(value, bool) else str(value)


def point_name(overrides: dict) -> str:
  """A filesystem-safe name from the overrides: last field component, dash, value."""
  parts = []
  for field_name, value in overrides.items():
    text = f"{field_name.split('.')[-1]}-{_format_value(value)}"
    parts.append(re.sub(r"[^A-Za-z0-9._-]+", "_", text))
  return "__".join(parts) or "base"


def expand(sweep: dict) -> list[Point]:
  """The sweep's points: the grid's cartesian product, then the explicit points."""
  unknown = set(sweep) - {"base", "grid", "points", "overrides"}
  if unknown or "base" not in sweep:
    raise ConfigError(
        f"sweep keys {sorted(sweep)} are invalid; it needs 'base' and may have 'grid', 'points', "
        "'overrides'"
    )
  grid = sweep.get("grid", {})
  combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
  if not grid:
    combos = []
  combos += list(sweep.get("points", []))
  if not combos:
    combos = [{}]
  common = sweep.get("overrides", {})
  points = [Point(point_name(c), {**common, **c}) for c in combos]
  names = [p.name for p in points]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ConfigError(f"sweep points share names {duplicates}; make their overrides differ")
  return points


def load_sweep_file(path: str) -> dict:
  """Runs the sweep file and returns its `get_sweep()`."""
  if not Path(path).is_file():
    raise MissingPathError(f"--sweep={path}: no such sweep file")
  get_sweep = runpy.run_path(path).get("get_sweep")
  if not callable(get_sweep):
    raise ConfigError(f"--sweep={path} defines no get_sweep(); see efficiency/sweep.py")
  sweep = get_sweep()
  if not isinstance(sweep, dict):
    raise ConfigError(f"--sweep={path}: get_sweep() returned {type(sweep).__name__}, not a dict")
  return sweep


def validate(base: str, points: list[Point]) -> dict[str, str]:
  """Resolves every point's config as train.py would (on this machine's devices), without
  running it; returns the one-line error of each point that cannot run, by point name."""
  import jax

  from efficiency.config import override, resolve

  path, _, arg = base.partition(":")
  if not Path(path).is_file():
    raise MissingPathError(f"sweep base {base!r}: no such config file")
  errors = {}
  for point in points:
    config = runpy.run_path(path)["get_config"](arg or None)
    try:
      for field_name, value in point.overrides.items():
        override(config, field_name, value)
      resolve(config, jax.device_count())
    except ConfigError as e:
      errors[point.name] = f"sweep point {point.name!r}: {e}"
  return errors


def command(base: str, point: Point, root: Path) -> list[str]:
  """The train.py command line of one point."""
  flags_ = [f"--config.{k}={_format_value(v)}" for k, v in point.overrides.items()]
  return [sys.executable, "train.py", f"--workdir={root / point.name}", f"--config={base}", *flags_]


def is_finished(workdir: Path) -> bool:
  return load_run(workdir).summary.get("status") == "completed"


def run_point(base: str, point: Point, root: Path) -> tuple[Point, int, str]:
  """Runs one point (unless finished); returns it, the exit code and the last error line."""
  workdir = root / point.name
  if is_finished(workdir):
    return point, 0, "skipped: already completed"
  workdir.mkdir(parents=True, exist_ok=True)
  with open(workdir / "train.log", "a") as log:
    proc = subprocess.run(command(base, point, root), cwd=ROOT, stdout=log, stderr=log)
  tail = (workdir / "train.log").read_text().strip().splitlines()
  return point, proc.returncode, tail[-1] if tail and proc.returncode else ""


def write_results(root: Path, points: list[Point], errors: dict[str, str]) -> list[dict]:
  """ROOT/results.csv and ROOT/results.md, one row per point, from each summary.json."""
  rows = []
  for point in points:
    summary = load_run(root / point.name).summary
    row = {"point": point.name, **{k: _format_value(v) for k, v in point.overrides.items()}}
    row.update({k: summary.get(k) for k in RESULT_KEYS})
    for key in PER_SOURCE_KEYS:  # a mixture's: one column per source
      row.update({f"{key}.{label}": v for label, v in (summary.get(key) or {}).items()})
    if point.name in errors:
      row["status"] = "failed"
      row["error"] = errors[point.name]
    rows.append(row)
  columns = list(dict.fromkeys(k for row in rows for k in row))
  with open(root / "results.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
  cell = lambda v: "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
  (root / "results.md").write_text("\n".join(lines) + "\n")
  return rows


def run_sweep(sweep_path: str, root: str | Path, parallel: int = 1, dry_run: bool = False) -> int:
  """Checks every point's config, then runs every point that can run; returns the number of
  failed points (a dry run prints the commands and the points that cannot run)."""
  if parallel < 1:
    raise ConfigError(f"--parallel={parallel} is invalid; it must be at least 1")
  sweep = load_sweep_file(sweep_path)
  points = expand(sweep)
  invalid = validate(sweep["base"], points)
  root = Path(root)
  if dry_run:
    for point in points:
      if point.name in invalid:
        print(f"error: {invalid[point.name]}", file=sys.stderr)
      else:
        print(" ".join(command(sweep["base"], point, root)))
    return len(invalid)
  root.mkdir(parents=True, exist_ok=True)
  errors = {}
  for name, message in invalid.items():  # never started: the config cannot run
    errors[name] = message
    tqdm.write(f"{name}: failed ({message})")
  runnable = [p for p in points if p.name not in invalid]
  with ThreadPoolExecutor(max_workers=max(parallel, 1)) as pool:
    jobs = [pool.submit(run_point, sweep["base"], p, root) for p in runnable]
    for job in tqdm(jobs, desc="sweep", unit="point"):
      point, returncode, message = job.result()
      if returncode:
        errors[point.name] = message
        tqdm.write(f"{point.name}: failed ({message}); log in {root / point.name / 'train.log'}")
      elif message:
        tqdm.write(f"{point.name}: {message}")
  write_results(root, points, errors)
  print(f"{len(points) - len(errors)} of {len(points)} points completed; results in "
        f"{root / 'results.md'}")
  return len(errors)
