"""Trains a language model: config -> mesh -> data -> model -> train loop -> workdir.

  python train.py --workdir=DIR [--config=configs/default.py[:ARG]] [--config.FIELD=VALUE ...]

Running it again on the same DIR resumes from the newest checkpoint.
"""

import logging as logging_std
import os
import runpy
import sys

from absl import app, flags, logging
from ml_collections import config_flags


def _config_file_and_arg(argv: list[str]) -> tuple[str, str | None]:
  """The --config=FILE[:ARG] given on the command line, or the default."""
  value = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
  path, _, arg = (value or "configs/default.py").partition(":")
  return path, arg or None


def _early_config_error(argv: list[str]) -> str | None:
  """A missing config file, or an override naming a field the config lacks, as one line."""
  path, arg = _config_file_and_arg(argv)
  if not os.path.isfile(path):
    return f"error: --config={path}: no such config file"
  try:
    config = runpy.run_path(path)["get_config"](arg)
  except Exception:  # noqa: BLE001  (the flag parser reports problems with the file itself)
    return None
  for flag in argv:
    if not flag.startswith("--config."):
      continue
    field = flag[len("--config.") :].split("=", 1)[0]
    node = config
    parts = field.split(".")
    for depth, part in enumerate(parts):
      if not hasattr(node, "keys") or part not in node:
        parent = ".".join(parts[:depth]) or "config"
        valid = sorted(node.keys()) if hasattr(node, "keys") else []
        return f"error: --config.{field}: {parent} has no field {part!r}; valid fields: {valid}"
      node = node[part]
  return None


if __name__ == "__main__" and (_error := _early_config_error(sys.argv)):
  sys.exit(_error)  # config_flags would fail on it with a traceback while defining the flag

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/default.py", "Training config file, optionally with :ARG.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and summary.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for a multi-process job."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in the job.")
flags.mark_flag_as_required("workdir")


def _initialize_distributed() -> None:
  """Joins a multi-process job when launched as one (flags, or a cluster jax detects itself)."""
  import jax

  if _NUM_PROCESSES.value and _NUM_PROCESSES.value > 1:
    if jax.config.jax_platforms in (None, "", "cpu") and not os.environ.get("CUDA_VISIBLE_DEVICES"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value,
    )
  elif os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("SLURM_NTASKS", "1") != "1":
    jax.distributed.initialize()


class _QuietLibraries(logging_std.Filter):
  """Drops INFO chatter from checkpointing and dataset libraries, and their benign warnings."""

  NOISY = tuple(f"{os.sep}{name}{os.sep}" for name in ("orbax", "tensorflow_datasets", "grain"))
  BENIGN = ("Using custom data configuration", "has no dataset_info.json")

  def filter(self, record: logging_std.LogRecord) -> bool:
    if not any(part in record.pathname for part in self.NOISY):
      return True
    if record.levelno >= logging_std.ERROR:
      return True
    message = record.getMessage()
    return record.levelno >= logging_std.WARNING and not any(b in message for b in self.BENIGN)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with flag errors as one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    lines = [line for line in str(e).splitlines() if line.strip()]
    if len(lines) > 1:  # a config file that raised: its flag, then the exception's own message
      flag = lines[0].split(": Error whilst")[0]
      sys.exit(f"error: {flag}: {lines[-1].split(': ', 1)[-1]}")
    sys.exit(f"error: {lines[0] if lines else e}")


def main(argv: list[str]) -> None:
  del argv
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  _initialize_distributed()
  import jax

  from efficiency.config import ConfigError, resolve

  config = _CONFIG.value
  try:
    with config.unlocked():
      resolve(config, jax.device_count(), jax.process_count())
  except ConfigError as e:
    sys.exit(f"error: {e}")

  from efficiency.train.loop import train_and_evaluate

  try:
    summary = train_and_evaluate(config, _WORKDIR.value)
  except ConfigError as e:
    sys.exit(f"error: {e}")
  except KeyboardInterrupt:
    sys.exit(f"interrupted: checkpoint saved in {_WORKDIR.value}; run again to resume")
  if jax.process_index() == 0:
    print(_describe(summary))


def _describe(summary: dict) -> str:
  """One line on how the run ended."""
  fmt = lambda value, spec: "n/a" if value is None else format(value, spec)
  reached = summary["tokens_to_target"]
  return (
      f"done: {summary['steps']} steps, final eval loss {fmt(summary['final_eval_loss'], '.4f')}, "
      f"tokens to target {summary['target_loss']}: "
      f"{'not reached' if reached is None else f'{reached:,}'}, "
      f"{fmt(summary['tokens_per_sec'], ',.0f')} tokens/s, MFU {fmt(summary['mfu'], '.2%')}"
  )


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
