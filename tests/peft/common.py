"""Tiny PEFT configs, random batches and a step runner shared by the PEFT tests."""

import flax.linen as nn
import jax
import numpy as np

from configs.finetune import get_config
from efficiency.config import resolve
from efficiency.sharding.mesh import make_mesh, to_global
from efficiency.sharding.rules import LOGICAL_AXIS_RULES
from efficiency.train.setup import Training
from tests.conftest import random_packed_batch, tiny_model_config


def tiny_peft_config(method: str, devices: int = 1, **peft):
  """A resolved fine-tuning config of a 2-layer model with `peft.method=method`."""
  config = get_config()
  config.model = tiny_model_config()
  config.update(batch_size=8, seq_len=16, steps=4)
  config.optimizer.update(warmup_steps=1, lr=1e-2, weight_decay=0.1)
  config.peft.update({"method": method, "rank": 4, **peft})
  return resolve(config, devices)


def packed_batch(rng: np.random.Generator, config) -> dict[str, np.ndarray]:
  tokens, segment_ids, positions = random_packed_batch(
      rng, config.batch_size, config.seq_len + 1, config.model.vocab_size
  )
  return {
      "inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": segment_ids[:, :-1],
      "positions": positions[:, :-1],
      "weights": ((segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] > 0))
      .astype(np.float32),
  }


def run(config, steps: int, base=None, seed: int = 0):
  """(initial state, final state, losses, training) after `steps` steps on fixed random batches."""
  rng = np.random.default_rng(seed)
  mesh = make_mesh(config.mesh)
  with mesh, nn.logical_axis_rules(LOGICAL_AXIS_RULES):
    training = Training(config, mesh)
    initial = jax.device_get(training.init(config.seed, base))
    state = training.init(config.seed, base)
    losses = []
    for _ in range(steps):
      batch = to_global(packed_batch(rng, config), training.rows_sharding)
      state, metrics = training.train_step(state, batch)
      losses.append(float(metrics["loss"]))
  return initial, state, losses, training
