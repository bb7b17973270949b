"""Runs a few train steps of a tiny model on a given mesh and prints the losses as JSON.

Run in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=N set beforehand:
  python -m tests.efficiency.sharded_steps DATA FSDP TENSOR [EXPERT NUM_EXPERTS] [--quant=MODE]
"""

import json
import sys

import flax.linen as nn
import jax
import numpy as np

from configs.default import get_config
from efficiency.config import resolve
from efficiency.sharding.mesh import make_mesh, to_global
from efficiency.sharding.rules import LOGICAL_AXIS_RULES
from efficiency.train.setup import Training
from tests.conftest import random_packed_batch, tiny_model_config

STEPS = 4


def main(
    data: int, fsdp: int, tensor: int, expert: int = 1, num_experts: int = 0, quant: str = "none"
) -> None:
  config = get_config()
  config.model = tiny_model_config(num_heads=4, num_kv_heads=2, d_model=32, d_ff=64)
  config.update(batch_size=8, seq_len=16, steps=STEPS)
  config.optimizer.update(warmup_steps=1, lr=1e-2)
  config.model.moe.num_experts = num_experts
  config.mesh.update(data=data, fsdp=fsdp, tensor=tensor, expert=expert)
  config.quant.mode = quant
  resolve(config, jax.device_count())  # copies quant into the model config
  rng = np.random.default_rng(0)
  mesh = make_mesh(config.mesh)
  losses, shardings = [], {}
  with mesh, nn.logical_axis_rules(LOGICAL_AXIS_RULES):
    training = Training(config, mesh)
    state = training.init(seed=0)
    for _ in range(STEPS):
      tokens, segment_ids, positions = random_packed_batch(rng, 8, 17, config.model.vocab_size)
      batch = {
          "inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": segment_ids[:, :-1],
          "positions": positions[:, :-1],
          "weights": ((segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] > 0))
          .astype(np.float32),
      }
      state, metrics = training.train_step(state, to_global(batch, training.rows_sharding))
      losses.append(float(metrics["loss"]))
    mlp = "moe" if num_experts else "mlp"
    kernel = state.params["layers"][mlp]["gate"]["kernel"]
    shardings["mlp_gate"] = list(kernel.sharding.spec)
    shardings["mlp_gate_shards"] = len(kernel.addressable_shards)
    shardings["adam_mu_gate"] = list(
        state.opt_state[1][0].mu["layers"][mlp]["gate"]["kernel"].sharding.spec
    )
  print(json.dumps({"losses": losses, "devices": jax.device_count(), **shardings}))


if __name__ == "__main__":
  quant = [a.removeprefix("--quant=") for a in sys.argv[1:] if a.startswith("--quant=")]
  sizes = [int(a) for a in sys.argv[1:] if not a.startswith("--quant=")]
  main(*sizes, quant=quant[0] if quant else "none")
