"""The memory plan of a training job, before it is queued: per-device bytes of the parameters,
the optimizer state and XLA's temporary buffers of the compiled train step, for the devices jax
sees (simulated CPU devices stand in for a pod: `evals.plan`)."""

import math

import jax
import ml_collections
import numpy as np

from efficiency.train.setup import Training

# The train batch's features and dtypes (data.pipeline).
BATCH_DTYPES = {"inputs": np.int32, "targets": np.int32, "segment_ids": np.int32,
                "positions": np.int32, "weights": np.float32}
# Memory of the chips a plan is checked against, in GB (10^9 bytes), and the share of it a step
# may use (the rest: the runtime, fragmentation, collectives' buffers).
CHIPS_GB = {"16GB (v5e, T4)": 16, "80GB (H100, A100)": 80, "141GB (H200)": 141}
USABLE_SHARE = 0.9


def per_device_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded abstract arrays (the largest shard of each)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return total


def memory_plan(config: ml_collections.ConfigDict, compile_step: bool = True) -> dict:
  """The plan of a resolved `config` on jax's devices: mesh, per-device parameter and optimizer
  bytes from the shardings, and (with `compile_step`) the compiled step's memory analysis."""
  training = Training(config)
  state = training.abstract_state
  params = per_device_bytes(state.params) + per_device_bytes(getattr(state, "frozen", None))
  optimizer = per_device_bytes(state.opt_state)
  plan = {
      "devices": jax.device_count(),
      "mesh": dict(training.mesh.shape),
      "param_count": training.param_count(),
      "batch_size": config.batch_size,
      "seq_len": config.seq_len,
      "remat": config.model.remat,
      "per_device_bytes": {"params": params, "optimizer_state": optimizer},
  }
  if not compile_step:
    return plan
  example = {k: np.zeros((1, 1), dtype) for k, dtype in BATCH_DTYPES.items()}  # dtypes only
  compiled, compile_time_s = training.compile(example)
  plan["compile_time_s"] = compile_time_s
  memory = compiled.memory_analysis()
  arguments, outputs = memory.argument_size_in_bytes, memory.output_size_in_bytes
  temp, alias = memory.temp_size_in_bytes, memory.alias_size_in_bytes
  peak = arguments + outputs - alias + temp
  plan["per_device_bytes"].update(
      arguments=arguments, outputs=outputs, aliased=alias, temp=temp, peak_estimate=peak
  )
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  plan["step_flops_per_device"] = float(cost.get("flops", 0.0)) if cost else None
  plan["fits"] = {chip: peak <= gb * 1e9 * USABLE_SHARE for chip, gb in CHIPS_GB.items()}
  return plan
