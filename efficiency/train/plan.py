"""The memory plan of a training job, before it is queued: per-device bytes of the parameters,
the optimizer state and XLA's buffers of the compiled train step on a mesh of the given devices
(a target topology's chips, compiled by that chip's compiler: `efficiency.sharding.topology`;
or simulated CPU devices), and the largest global batch that fits the chip.
"""

import math
import re

import jax
import ml_collections
import numpy as np

from efficiency.attention import attention_impl
from efficiency.model.flops import flops_per_token
from efficiency.sharding.chips import Chip
from efficiency.sharding.mesh import data_parallel_size, make_mesh
from efficiency.sharding.target import platform_of
from efficiency.train.setup import Training

# The train batch's features and dtypes (data.pipeline).
BATCH_DTYPES = {"inputs": np.int32, "targets": np.int32, "segment_ids": np.int32,
                "positions": np.int32, "weights": np.float32}
# Without a target: memory of chips a CPU plan is checked against, in GB (10^9 bytes), and the
# share of it a step may use (the rest: the runtime, fragmentation, collectives' buffers).
CHIPS_GB = {"16GB (v5e, T4)": 16, "80GB (H100, A100)": 80, "141GB (H200)": 141}
USABLE_SHARE = 0.9
# Probes of the largest-batch search (each one a compile).
MAX_PROBES = 8


def per_device_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded abstract arrays (the largest shard of each)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return total


def compile_error(e: Exception) -> str:
  """A compiler's failure as one line: for out of memory, the bytes needed and available."""
  text = str(e)
  oom = re.search(r"Used ([\d.]+\w?) of ([\d.]+\w?) (\w+)", text) or re.search(
      r"\(([\d.]+\w?)\) exceeds available (\w+) \(([\d.]+\w?)\)", text)
  if "RESOURCE_EXHAUSTED" in text and oom:
    groups = oom.groups()
    needed, available = (groups[0], groups[1]) if "Used" in oom[0] else (groups[0], groups[2])
    return f"out of memory: needs {needed} per chip, {available} available"
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  # A Python error inside the compiler (a custom partitioner) comes as its traceback: its last
  # `SomeError: ...` line is the reason.
  raised = [line for line in lines if re.match(r"^\w+(Error|Exception): ", line)]
  reason = raised[-1] if raised and "Traceback" in text else (lines[0] if lines else "")
  return f"{type(e).__name__}: {reason[:300]}"


def _with(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted `fields` set (e.g. `model__remat="full"`)."""
  config = ml_collections.ConfigDict(config.to_dict())
  for key, value in fields.items():
    node, *path = key.split("__")
    target = config
    for part in [node, *path][:-1]:
      target = target[part]
    target[[node, *path][-1]] = value
  return config


def memory_plan(
    config: ml_collections.ConfigDict, compile_step: bool = True, devices=None,
    chip: Chip | None = None,
) -> dict:
  """The plan of a resolved `config` on a mesh over `devices` (default: jax's): mesh, per-device
  parameter and optimizer bytes from the shardings and, with `compile_step`, the compiled step's
  memory and cost analyses. With a target `chip`, `fits` says whether the step fits its memory;
  a compile failure is `compiled: False` with the compiler's reason in `error`."""
  devices = jax.devices() if devices is None else list(devices)
  platform = platform_of(devices)
  training = Training(config, mesh=make_mesh(config.mesh, devices))
  state = training.abstract_state
  params = per_device_bytes(state.params) + per_device_bytes(getattr(state, "frozen", None))
  optimizer = per_device_bytes(state.opt_state)
  plan = {
      "chip": None if chip is None else {"name": chip.name, "kind": chip.kind,
                                         "hbm_bytes": chip.hbm_bytes},
      "platform": platform,
      "devices": len(devices),
      "mesh": dict(training.mesh.shape),
      "param_count": training.param_count(),
      "batch_size": config.batch_size,
      "grad_accum_steps": config.grad_accum_steps,
      "seq_len": config.seq_len,
      "remat": config.model.remat,
      "attention_impl": attention_impl(config, platform),
      "per_device_bytes": {"params": params, "optimizer_state": optimizer},
  }
  if not compile_step:
    return plan
  example = {k: np.zeros((1, 1), dtype) for k, dtype in BATCH_DTYPES.items()}  # dtypes only
  try:
    compiled, compile_time_s = training.compile(example)
  except Exception as e:  # noqa: BLE001  (the compiler's reason is the result)
    plan.update(compiled=False, fits=False, error=compile_error(e))
    return plan
  plan.update(compiled=True, compile_time_s=compile_time_s)
  memory = compiled.memory_analysis()
  arguments, outputs = memory.argument_size_in_bytes, memory.output_size_in_bytes
  temp, alias = memory.temp_size_in_bytes, memory.alias_size_in_bytes
  peak = arguments + outputs - alias + temp
  plan["per_device_bytes"].update(
      arguments=arguments, outputs=outputs, aliased=alias, temp=temp, peak_estimate=peak
  )
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  # XLA's count where the compiler gives one (the GPU compiler without a GPU does not).
  plan["step_flops_per_device"] = float(cost["flops"]) if cost and cost.get("flops") else None
  plan["model_flops_per_device"] = (
      flops_per_token(config.model, config.seq_len) * config.batch_size * config.seq_len
      / len(devices))
  if chip is None:
    plan["fits"] = None
    plan["fits_on"] = {name: peak <= gb * 1e9 * USABLE_SHARE for name, gb in CHIPS_GB.items()}
  else:
    plan["fits"] = peak <= chip.hbm_bytes
  return plan


def _fits(config: ml_collections.ConfigDict, devices, chip: Chip, batch: int) -> bool:
  plan = memory_plan(_with(config, batch_size=batch), devices=devices, chip=chip)
  return bool(plan.get("fits"))


def largest_batch(
    config: ml_collections.ConfigDict, devices, chip: Chip, fits_now: bool,
    progress=None,
) -> int | None:
  """The largest global batch that fits `chip` (a multiple of the data-parallel size times
  `grad_accum_steps`), by doubling from `config.batch_size` and bisecting, with the real
  compiler; at most MAX_PROBES compiles. None if even one step's worth does not fit."""
  unit = data_parallel_size(config.mesh, len(devices)) * config.grad_accum_steps
  probes = 0

  def fits(batch: int) -> bool:
    nonlocal probes
    probes += 1
    if progress is not None:
      progress(batch)
    return _fits(config, devices, chip, batch)

  if fits_now:
    low, high = config.batch_size // unit, None
    while high is None and probes < MAX_PROBES:
      if fits(2 * low * unit):
        low *= 2
      else:
        high = 2 * low
  else:
    low, high = 0, config.batch_size // unit
  high = high or low + 1
  while high - low > 1 and probes < MAX_PROBES:
    mid = (low + high) // 2
    low, high = (mid, high) if fits(mid * unit) else (low, mid)
  return low * unit or None


def levers(config: ml_collections.ConfigDict, devices, chip: Chip) -> dict | None:
  """The first change of `model.remat` (to "full"), then `grad_accum_steps` (x2 up to x16) that
  makes `config.batch_size` fit; None if none does."""
  tries = []
  if config.model.remat != "full":
    tries.append({"model__remat": "full"})
  dp = data_parallel_size(config.mesh, len(devices))
  for factor in (2, 4, 8, 16):
    accum = config.grad_accum_steps * factor
    if config.batch_size % (dp * accum) == 0:
      tries.append({"model__remat": "full", "grad_accum_steps": accum})
  for change in tries:
    if _fits(_with(config, **change), devices, chip, config.batch_size):
      return {k.replace("__", "."): v for k, v in change.items()}
  return None
