"""The train step: gradient accumulation, the weight-decay mask, the schedule, learning."""

import flax.linen as nn
import jax
import numpy as np

from configs.default import get_config
from efficiency.sharding.mesh import make_mesh, to_global
from efficiency.sharding.rules import LOGICAL_AXIS_RULES
from efficiency.train.optimizer import make_schedule, weight_decay_mask
from efficiency.train.setup import Training
from tests.conftest import random_packed_batch, tiny_model_config


def tiny_config(**overrides):
  config = get_config()
  config.model = tiny_model_config()
  config.update(batch_size=4, seq_len=16, steps=10)
  config.optimizer.warmup_steps = 2
  config.update(overrides)
  return config


def packed_batch(rng, config) -> dict[str, np.ndarray]:
  tokens, segment_ids, positions = random_packed_batch(
      rng, config.batch_size, config.seq_len + 1, config.model.vocab_size
  )
  return {
      "inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": segment_ids[:, :-1],
      "positions": positions[:, :-1],
      "weights": ((segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] > 0))
      .astype(np.float32),
  }


def run_steps(config, batches):
  mesh = make_mesh(config.mesh)
  with mesh, nn.logical_axis_rules(LOGICAL_AXIS_RULES):
    training = Training(config, mesh)
    state = training.init(seed=0)
    losses = []
    for batch in batches:
      state, metrics = training.train_step(state, to_global(batch, training.rows_sharding))
      losses.append(float(metrics["loss"]))
  return state, losses


def test_gradient_accumulation_equals_full_batch(rng):
  batches = [packed_batch(rng, tiny_config()) for _ in range(3)]
  full, full_losses = run_steps(tiny_config(), batches)
  accumulated, accumulated_losses = run_steps(tiny_config(grad_accum_steps=2), batches)
  np.testing.assert_allclose(accumulated_losses, full_losses, rtol=1e-5)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), accumulated.params, full.params
  )


def test_loss_falls_on_a_repeated_batch(rng):
  batch = packed_batch(rng, tiny_config())
  _, losses = run_steps(tiny_config(), [batch] * 8)
  assert losses[-1] < losses[0] - 0.5


def test_weight_decay_skips_norm_scales_and_biases():
  params = {
      "layers": {"attn": {"query": {"kernel": 1, "bias": 2}}, "attn_norm": {"scale": 3}},
      "embed": {"embedding": 4},
  }
  mask = weight_decay_mask(params)
  assert mask["layers"]["attn"]["query"] == {"kernel": True, "bias": False}
  assert mask["layers"]["attn_norm"]["scale"] is False
  assert mask["embed"]["embedding"] is True


def test_warmup_then_cosine_to_min_lr():
  config = tiny_config().optimizer
  config.update(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
  schedule = make_schedule(config, total_steps=100)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(5)), 5e-4, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(10)), 1e-3, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(100)), 1e-4, rtol=1e-5)
  assert float(schedule(50)) > float(schedule(70)) > 1e-4
