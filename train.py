"""Trains a language model: config -> mesh -> data -> model -> train loop -> workdir.

  python train.py --workdir=DIR [--config=configs/default.py[:ARG]] [--config.FIELD=VALUE ...]

Running it again on the same DIR resumes from the newest checkpoint.
"""

import logging as logging_std
import os
import sys

from absl import flags, logging
from ml_collections import config_flags

from efficiency import cli

if __name__ == "__main__" and (_error := cli.config_flag_error(sys.argv)):
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
_DISTRIBUTED = flags.DEFINE_boolean(
    "distributed", False,
    "Join a multi-process job that jax.distributed detects itself (TPU pods, Open MPI, "
    "Kubernetes); SLURM and the flags above are detected without it.",
)
flags.mark_flag_as_required("workdir")


def _initialize_distributed() -> None:
  """Joins a multi-process job when launched as one: by flags, by the generic environment
  (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) or under a cluster manager that
  `jax.distributed.initialize()` detects itself (SLURM, TPU pods, Open MPI, Kubernetes). CPU
  devices of such a job talk through gloo."""
  import jax

  env = os.environ
  address = _COORDINATOR.value or env.get("JAX_COORDINATOR_ADDRESS")
  num_processes = _NUM_PROCESSES.value or int(env.get("JAX_NUM_PROCESSES", "0")) or None
  process_id = _PROCESS_ID.value
  if process_id is None and "JAX_PROCESS_ID" in env:
    process_id = int(env["JAX_PROCESS_ID"])
  slurm_job = "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1
  if (num_processes or 1) > 1 or address or slurm_job or _DISTRIBUTED.value:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices only
    jax.distributed.initialize(
        coordinator_address=address, num_processes=num_processes, process_id=process_id
    )


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


def main(argv: list[str]) -> None:
  del argv
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  _initialize_distributed()
  import jax

  from efficiency.config import resolve
  from efficiency.train.interrupts import Interrupted
  from efficiency.train.loop import train_and_evaluate

  config = resolve(_CONFIG.value, jax.device_count(), jax.process_count())
  try:
    summary = train_and_evaluate(config, _WORKDIR.value, launched_at=_process_start())
  except Interrupted as e:
    safe = "no checkpoint yet" if e.step is None else f"step {e.step} is saved"
    print(f"interrupted ({e}): {safe} in {_WORKDIR.value}; run again to resume", file=sys.stderr)
    sys.exit(128 + e.signum)
  if jax.process_index() == 0:
    print(_describe(summary))


def _process_start() -> float:
  """When this process started (epoch seconds): the goodput account counts imports too."""
  import psutil

  return psutil.Process().create_time()


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
  cli.run(main)
