"""Mixture of experts: top-k routing, capacity and dropped choices, the load-balancing loss."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from efficiency.model.flops import matmul_params
from efficiency.model.moe import MoE, capacity, route
from tests.helpers import tiny_model_config


def random_probs(rng, b, t, e, skew=0.0):
  logits = rng.standard_normal((b, t, e)) + skew * np.arange(e)
  return jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)


def test_each_real_token_goes_to_exactly_top_k_experts(rng):
  b, t, e, k = 2, 10, 4, 2
  probs = random_probs(rng, b, t, e)
  real = np.ones((b, t), np.int32)
  real[1, 7:] = 0  # padding
  combine, dispatch, dropped, _ = route(probs, jnp.asarray(real), k, slots=b * t * k)
  per_expert = np.asarray(dispatch).sum(-1)  # [B, T, E]: slots a token holds in each expert
  assert per_expert.max() <= 1
  np.testing.assert_array_equal(per_expert.sum(-1), real * k)
  want = np.argsort(-np.asarray(probs), axis=-1)[..., :k]
  for bi, ti in zip(*np.nonzero(real), strict=True):
    assert set(np.nonzero(per_expert[bi, ti])[0]) == set(want[bi, ti])
  # Gates are the top-k probabilities renormalized to 1.
  np.testing.assert_allclose(np.asarray(combine).sum((-1, -2)), real, atol=1e-6)
  assert int(dropped) == 0


def test_capacity_is_respected_and_drops_counted(rng):
  """Everyone prefers expert 0: it fills its C slots in token order, the rest are dropped."""
  b, t, e, k, c = 1, 12, 4, 2, 3
  probs = random_probs(rng, b, t, e, skew=-5.0)  # expert 0 first, expert 1 second for most
  real = jnp.ones((b, t), jnp.int32)
  _, dispatch, dropped, _ = route(probs, real, k, slots=c)
  dispatch = np.asarray(dispatch)
  assert dispatch.sum(1).max() <= 1  # each slot of each expert holds at most one token
  choices = np.zeros((t, e), int)
  for ti, experts in enumerate(np.argsort(-np.asarray(probs[0]), axis=-1)[:, :k]):
    choices[ti, experts] = 1
  kept = np.minimum(choices.sum(0), c)
  np.testing.assert_array_equal(dispatch[0].sum((0, 2)), kept)
  assert int(dropped) == t * k - kept.sum() > 0
  # First choices take slots before second choices; within a rank, earlier tokens first.
  first = np.argmax(np.asarray(probs[0]), -1)
  assert dispatch[0, np.nonzero(first == 0)[0][:c], 0].sum() == c


def test_aux_loss_is_one_for_uniform_routing_and_larger_when_skewed(rng):
  b, t, e = 2, 16, 4
  real = jnp.ones((b, t), jnp.int32)
  uniform = jnp.full((b, t, e), 1 / e)
  assert float(route(uniform, real, 2, 64)[3]) == 1.0
  for skew in (1.0, 3.0):
    assert float(route(random_probs(rng, b, t, e, skew), real, 2, 64)[3]) > 1.05


def test_capacity_and_active_flops():
  cfg = tiny_model_config()
  cfg.moe.update(num_experts=4, top_k=2, capacity_factor=1.25)
  assert capacity(cfg, 24) == 15  # ceil(1.25 * 24 * 2 / 4)
  dense = tiny_model_config()
  # Per layer: router 32 x 4 plus 2 active experts instead of 1 dense MLP of 3 x 32 x 64.
  assert matmul_params(cfg) - matmul_params(dense) == 2 * (32 * 4 + 3 * 32 * 64)


def test_moe_layer_sows_its_loss_and_shards_experts(rng):
  cfg = tiny_model_config()
  cfg.moe.update(num_experts=4, top_k=1, capacity_factor=0.5)
  module = MoE(ml_collections.FrozenConfigDict(cfg))
  x = jnp.asarray(rng.standard_normal((2, 8, 32)), jnp.float32)
  segment_ids = jnp.ones((2, 8), jnp.int32)
  variables = jax.jit(module.init)(jax.random.PRNGKey(0), x, segment_ids)
  specs = nn.get_partition_spec(variables)["params"]
  assert tuple(specs["gate"]["kernel"]) == ("expert", "embed", "mlp")
  y, sown = module.apply(nn.meta.unbox(variables), x, segment_ids, mutable=["moe"])
  assert y.shape == x.shape
  # One slot per expert per row (ceil(0.5 x 8 x 1 / 4)): a row keeps one token per expert used.
  router = nn.meta.unbox(variables)["params"]["router"]["kernel"]
  chosen = np.argmax(np.einsum("btd,de->bte", x, router), -1)
  kept = sum(len(set(row)) for row in chosen)
  assert int(sown["moe"]["dropped"][0]) == 16 - kept >= 8
