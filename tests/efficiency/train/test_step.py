"""The train step: gradient accumulation, the weight-decay mask, the schedule, learning."""

import jax
import numpy as np

from efficiency.train.optimizer import make_schedule, weight_decay_mask
from tests.helpers import packed_batch, run_steps, tiny_config


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
