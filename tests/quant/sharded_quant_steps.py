"""Runs a few int8 AQT train steps of a tiny scanned model on a mesh; prints losses as JSON.

Run in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=N set beforehand:
  python -m tests.quant.sharded_quant_steps DATA FSDP TENSOR
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

STEPS = 3


def main(data: int, fsdp: int, tensor: int) -> None:
  config = get_config()
  config.model = tiny_model_config(num_heads=4, num_kv_heads=2, d_model=32, d_ff=64)
  config.update(batch_size=8, seq_len=16, steps=STEPS)
  config.optimizer.update(warmup_steps=1, lr=1e-2)
  config.mesh.update(data=data, fsdp=fsdp, tensor=tensor)
  config.quant.mode = "int8"
  resolve(config, jax.device_count())
  assert config.model.scan_layers and config.model.quant.mode == "int8"
  rng = np.random.default_rng(0)
  losses = []
  with make_mesh(config.mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
    training = Training(config, make_mesh(config.mesh))
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
    shards = len(state.params["layers"]["mlp"]["gate"]["kernel"].addressable_shards)
  print(json.dumps({"losses": losses, "devices": jax.device_count(), "gate_shards": shards}))


if __name__ == "__main__":
  main(*(int(a) for a in sys.argv[1:]))
