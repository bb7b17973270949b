"""What a resume may change: a run continued in a workdir with checkpoints must keep every field
that changes shapes or the data order. `check_resume` compares the config with the saved
config.json before anything is written, and names the fields that differ."""

import fnmatch
from pathlib import Path

import ml_collections

from efficiency.errors import ConfigError
from efficiency.workdir import files

# Fields a resumed run may change (globs over dotted names): its length and cadence, its
# logging, the mesh, how the layer scan is compiled and how data is read, and a mixture's weights
# (each source continues where it stopped). The learning-rate schedule follows `steps`.
RESUMABLE = (
    "steps", "target_loss", "eval_every", "eval_batches", "log_every", "checkpoint_every",
    "keep_checkpoints", "grad_accum_steps", "mesh.*", "model.scan_unroll", "on_nonfinite",
    "max_nonfinite_skips", "profile.*", "log.*",
    "data.worker_threads", "data.prefetch", "data.data_dir", "data.tfds_data_dir",
    "data.mixture.*.weight",
)


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
  """{"a": {"b": 1}} -> {"a.b": 1}."""
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      flat.update(flatten(value, f"{name}."))
    else:
      flat[name] = list(value) if isinstance(value, tuple) else value
  return flat


def resumable(field: str) -> bool:
  return any(fnmatch.fnmatchcase(field, pattern) for pattern in RESUMABLE)


def differing_fields(config: ml_collections.ConfigDict, saved: dict) -> list[str]:
  """Fields in both configs whose values differ and that a resume may not change. Fields only
  one side has (added or removed by another version of the code) are not compared."""
  new, old = flatten(config.to_dict()), flatten(saved)
  return sorted(k for k in new.keys() & old.keys() if new[k] != old[k] and not resumable(k))


def fill_shards(config: ml_collections.ConfigDict, workdir: str | Path, process_count: int) -> None:
  """Sets `data.shards` where it is 0 (auto): the saved run's value when resuming, else the
  process count, so a resumed run reads the same streams on any process count."""
  if config.data.get("shards", 0):
    return
  workdir = Path(workdir)
  saved = 0
  if files.checkpoint_steps(workdir) and (workdir / files.CONFIG).is_file():
    saved = files.read_json(workdir / files.CONFIG).get("data", {}).get("shards", 0)
  config.data.shards = saved or process_count


def check_resume(config: ml_collections.ConfigDict, workdir: str | Path) -> None:
  """Raises ConfigError naming the fields that differ from the saved config.json, when `workdir`
  holds checkpoints to resume from; does nothing for a new or never-saved workdir."""
  workdir = Path(workdir)
  if not files.checkpoint_steps(workdir) or not (workdir / files.CONFIG).is_file():
    return
  saved = files.read_json(workdir / files.CONFIG)
  differ = differing_fields(config, saved)
  if not differ:
    return
  new, old = flatten(config.to_dict()), flatten(saved)
  shown = ", ".join(f"{k}={new[k]!r} (saved: {old[k]!r})" for k in differ[:6])
  more = f" and {len(differ) - 6} more" if len(differ) > 6 else ""
  raise ConfigError(
      f"cannot resume {str(workdir)!r} with a different config: {shown}{more}; use the saved "
      f"config.json's values or a new workdir (fields a resume may change: {', '.join(RESUMABLE)})"
  )
