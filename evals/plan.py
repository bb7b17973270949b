"""The memory plan of a training job on N devices, by simulation: AOT-compiles the train step for
N simulated CPU devices and reports per-device bytes, so a shape and mesh can be checked against
a chip's memory before the job is queued.

  python -m evals.plan --config=configs/efficientllm.py:3b --devices=64 [--config.mesh.fsdp=16]
      [--config.FIELD=VALUE ...] [--compile=false]

Prints a table, then the plan as one JSON line (per-device bytes of parameters, optimizer state,
XLA's arguments, outputs and temporary buffers, the peak estimate and which chips it fits).
"""

import json
import os
import sys

from absl import flags
from ml_collections import config_flags

from efficiency import cli

if __name__ == "__main__" and (_error := cli.config_flag_error(sys.argv)):
  sys.exit(_error)

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/default.py", "Training config file, optionally with :ARG.", lock_config=True
)
_DEVICES = flags.DEFINE_integer("devices", 8, "Devices to plan for (simulated on the CPU).")
_COMPILE = flags.DEFINE_boolean(
    "compile", True, "Compile the step for XLA's memory analysis (else shardings only)."
)


def _gb(n: int | None) -> str:
  return "-" if n is None else f"{n / 1e9:.2f} GB"


def main(argv: list[str]) -> None:
  del argv
  if _DEVICES.value < 1:
    sys.exit(f"error: --devices={_DEVICES.value} is invalid; it must be at least 1")
  # Before jax starts: N host devices stand in for the job's chips.
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_DEVICES.value}"
  )
  os.environ["JAX_PLATFORMS"] = "cpu"
  from efficiency.config import resolve
  from efficiency.train.plan import memory_plan

  config = resolve(_CONFIG.value, _DEVICES.value, backend="cpu")
  plan = memory_plan(config, compile_step=_COMPILE.value)
  sizes = plan["per_device_bytes"]
  print(f"{plan['param_count'] / 1e9:.2f}B parameters on {plan['devices']} devices, mesh "
        f"{plan['mesh']}, batch {plan['batch_size']} x {plan['seq_len']}, remat {plan['remat']}")
  for name in ("params", "optimizer_state", "arguments", "outputs", "aliased", "temp",
               "peak_estimate"):
    if name in sizes:
      print(f"  {name:<16} {_gb(sizes[name])} per device")
  for chip, fits in plan.get("fits", {}).items():
    print(f"  {chip:<20} {'fits' if fits else 'does not fit'}")
  print(json.dumps(plan))


if __name__ == "__main__":
  cli.run(main)
