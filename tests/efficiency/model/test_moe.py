"""Mixture of experts: routing variants, capacity and dropped choices, the load-balancing loss,
dropless dispatch against a per-token dense reference, bias balancing, active FLOPs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from efficiency.model.flops import matmul_params
from efficiency.model.moe import (
  MoE,
  balance,
  capacity,
  choose,
  route,
  tiled_matmul,
  update_bias,
)
from tests.helpers import tiny_model_config


def random_probs(rng, b, t, e, skew=0.0):
  logits = rng.standard_normal((b, t, e)) + skew * np.arange(e)
  return jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)


def moe_config(**moe) -> ml_collections.ConfigDict:
  cfg = tiny_model_config()
  cfg.moe.update({"num_experts": 4, "top_k": 2, **moe})
  return cfg


def top_k(probs, k, renormalize=True):
  cfg = moe_config(top_k=k, renormalize=renormalize).moe
  return choose(jnp.log(probs), cfg)


def test_each_real_token_goes_to_exactly_top_k_experts(rng):
  b, t, e, k = 2, 10, 4, 2
  probs = random_probs(rng, b, t, e)
  real = np.ones((b, t), np.int32)
  real[1, 7:] = 0  # padding
  _, gates, experts = top_k(probs, k)
  combine, dispatch, dropped = route(gates, experts, jnp.asarray(real), e, slots=b * t * k)
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
  _, gates, experts = top_k(probs, k)
  _, dispatch, dropped = route(gates, experts, real, e, slots=c)
  dispatch = np.asarray(dispatch)
  assert dispatch.sum(1).max() <= 1  # each slot of each expert holds at most one token
  choices = np.zeros((t, e), int)
  for ti, chosen in enumerate(np.argsort(-np.asarray(probs[0]), axis=-1)[:, :k]):
    choices[ti, chosen] = 1
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
  rotation = (np.arange(t)[:, None] + np.arange(2)) % e  # every expert the same share
  load, loss = balance(uniform, jnp.asarray(np.broadcast_to(rotation, (b, t, 2))), real)
  assert float(loss) == pytest.approx(1.0)
  np.testing.assert_allclose(load, 1 / e)
  for skew in (1.0, 3.0):
    probs, _, chosen = top_k(random_probs(rng, b, t, e, skew), 2)
    load, loss = balance(probs, chosen, real)
    assert float(loss) > 1.05 and float(jnp.sum(load)) == pytest.approx(1.0)


def test_router_variants(rng):
  """Renormalized softmax-then-top-k equals top-k-then-softmax; without renormalizing the gates
  are the raw probabilities; a bias changes the choice but never enters the gates."""
  logits = jnp.asarray(rng.standard_normal((2, 6, 4)), jnp.float32)
  _, g1, e1 = choose(logits, moe_config(router="softmax_topk").moe)
  _, g2, e2 = choose(logits, moe_config(router="topk_softmax").moe)
  np.testing.assert_array_equal(e1, e2)
  np.testing.assert_allclose(g1, g2, rtol=1e-6)
  probs, g3, e3 = choose(logits, moe_config(renormalize=False).moe)
  np.testing.assert_allclose(g3, jnp.take_along_axis(probs, e3, -1))
  assert float(jnp.max(jnp.sum(g3, -1))) < 1
  bias = jnp.asarray([10.0, 0, 0, 0])  # forces expert 0 into every token's choice
  for router in ("softmax_topk", "topk_softmax"):
    probs, gates, experts = choose(logits, moe_config(router=router).moe, bias)
    assert bool(jnp.all(jnp.any(experts == 0, -1)))
    chosen = jnp.take_along_axis(jax.nn.softmax(logits), experts, -1)
    np.testing.assert_allclose(gates, chosen / chosen.sum(-1, keepdims=True), rtol=1e-5)


def test_bias_balancing_moves_a_skewed_router_toward_uniform(rng):
  e, rate = 8, 0.01
  logits = jnp.asarray(rng.standard_normal((4, 64, e)) + 0.5 * np.arange(e), jnp.float32)
  real = jnp.ones((4, 64), jnp.int32)
  cfg = moe_config(num_experts=e, bias_rate=rate).moe
  load_of = jax.jit(lambda bias: balance(*choose(logits, cfg, bias)[::2], real)[0])
  bias = jnp.zeros(e)
  spread = []
  for _ in range(100):
    load = load_of(bias)
    spread.append(float(jnp.max(load) - jnp.min(load)))
    bias = update_bias(bias, load, rate)
  assert spread[0] > 0.3 and max(spread[-10:]) < spread[0] / 2, spread
  assert float(bias[0]) > 0 > float(bias[-1])  # the least-preferred expert was raised


def test_capacity_and_active_flops():
  cfg = moe_config(capacity_factor=1.25)
  assert capacity(cfg, 24) == 15  # ceil(1.25 * 24 * 2 / 4)
  dense = tiny_model_config()
  # Per layer: router 32 x 4 plus 2 active experts instead of 1 dense MLP of 3 x 32 x 64.
  assert matmul_params(cfg) - matmul_params(dense) == 2 * (32 * 4 + 3 * 32 * 64)
  cfg.moe.shared_experts = 1  # one more always-active expert
  assert matmul_params(cfg) - matmul_params(dense) == 2 * (32 * 4 + 2 * 3 * 32 * 64)


def test_capacity_layer_sows_its_loss_and_shards_experts(rng):
  cfg = moe_config(top_k=1, capacity_factor=0.5, dispatch="capacity")
  module = MoE(ml_collections.FrozenConfigDict(cfg))
  x = jnp.asarray(rng.standard_normal((2, 8, 32)), jnp.float32)
  segment_ids = jnp.ones((2, 8), jnp.int32)
  variables = jax.jit(module.init)(jax.random.PRNGKey(0), x, segment_ids)
  specs = nn.get_partition_spec(variables)["params"]
  assert tuple(specs["gate"]["kernel"]) == ("expert", "embed", "mlp")
  y, sown = module.apply({"params": nn.meta.unbox(variables)["params"]}, x, segment_ids,
                         mutable=["moe"])
  assert y.shape == x.shape
  # One slot per expert per row (ceil(0.5 x 8 x 1 / 4)): a row keeps one token per expert used.
  router = nn.meta.unbox(variables)["params"]["router"]["kernel"]
  chosen = np.argmax(np.einsum("btd,de->bte", x, router), -1)
  kept = sum(len(set(row)) for row in chosen)
  assert int(sown["moe"]["dropped"][0]) == 16 - kept >= 8


def reference(params, x_BTD, segment_ids_BT, cfg):
  """Per-token dense MoE: every token through every expert, weighted by a one-hot of its top-k
  gates; padding gives 0. Differentiable, no sorting or capacity."""
  logits = jnp.einsum("btd,de->bte", x_BTD, params["router"]["kernel"])
  _, gates_BTK, experts_BTK = choose(logits, cfg.moe)
  weights_BTE = jnp.einsum("btk,btke->bte", gates_BTK, jax.nn.one_hot(experts_BTK, 4))
  weights_BTE = weights_BTE * (segment_ids_BT != 0)[..., None]
  kernel = lambda name: params[name]["kernel"]
  h = nn.silu(jnp.einsum("btd,edf->btef", x_BTD, kernel("gate")))
  h = h * jnp.einsum("btd,edf->btef", x_BTD, kernel("up"))
  y_BTED = jnp.einsum("btef,efd->bted", h, kernel("down"))
  return jnp.einsum("bted,bte->btd", y_BTED, weights_BTE)


def reference_float64(params, x, segment_ids, cfg):
  """The same per token in float64 numpy, one token and one chosen expert at a time."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x = np.asarray(x, np.float64)
  logits = x @ p["router"]["kernel"]
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  y = np.zeros_like(x)
  for b, t in zip(*np.nonzero(np.asarray(segment_ids)), strict=True):
    chosen = np.argsort(-probs[b, t])[: cfg.moe.top_k]
    gates = probs[b, t, chosen] / probs[b, t, chosen].sum()
    for g, e in zip(gates, chosen, strict=True):
      a = x[b, t] @ p["gate"]["kernel"][e]
      h = a / (1 + np.exp(-a)) * (x[b, t] @ p["up"]["kernel"][e])
      y[b, t] += g * (h @ p["down"]["kernel"][e])
  return y


def test_tiled_matmul_equals_ragged_dot_at_linear_cost(rng):
  """Groups of 0, 1, a tile and more rows, and rows past the groups (0 out): values and
  gradients equal ragged_dot's; the compiled FLOPs stay within 2x of one dense matmul of the
  rows, where XLA:CPU's ragged_dot does E times that."""
  m, k, n, e = 300, 16, 24, 5
  x = jnp.asarray(rng.standard_normal((m, k)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((e, k, n)), jnp.float32)
  sizes = jnp.asarray([0, 1, 128, 150, 0], jnp.int32)  # 279 of 300 rows
  np.testing.assert_allclose(tiled_matmul(x, w, sizes), jax.lax.ragged_dot(x, w, sizes),
                             rtol=1e-5, atol=1e-5)
  assert float(jnp.abs(tiled_matmul(x, w, sizes)[279:]).max()) == 0
  grad = lambda f: jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w, sizes))), argnums=(0, 1))(x, w)
  for got, want in zip(grad(tiled_matmul), grad(jax.lax.ragged_dot), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  big_x, big_w = jnp.zeros((2048, 64)), jnp.zeros((8, 64, 128))
  big_sizes = jnp.full((8,), 256, jnp.int32)
  flops = lambda f: jax.jit(f).lower(big_x, big_w, big_sizes).compile().cost_analysis()["flops"]
  dense = 2 * 2048 * 64 * 128
  assert flops(tiled_matmul) < 2 * dense < 4 * dense < flops(jax.lax.ragged_dot)


@pytest.mark.parametrize("matmul", ["tiles", "ragged_dot"])
def test_dropless_equals_per_token_reference_forward_and_gradients(rng, matmul):
  """Packed rows (segments 1, 2, 3) and padding (segment 0): dropless gives each real token its
  k experts' gate-weighted sum and padding 0, drops nothing, and its gradients with respect to
  the input and every weight equal the dense reference's."""
  cfg = moe_config(dispatch="dropless", grouped_matmul=matmul)
  module = MoE(ml_collections.FrozenConfigDict(cfg))
  x = jnp.asarray(rng.standard_normal((2, 12, 32)), jnp.float32)
  segment_ids = jnp.asarray([[1] * 5 + [2] * 4 + [3] * 3, [1] * 7 + [2] * 2 + [0] * 3], jnp.int32)
  params = nn.meta.unbox(jax.jit(module.init)(jax.random.PRNGKey(1), x, segment_ids))["params"]
  y, sown = jax.jit(lambda p, x: module.apply({"params": p}, x, segment_ids, mutable=["moe"]))(
      params, x
  )
  np.testing.assert_allclose(y, reference_float64(params, x, segment_ids, cfg), atol=2e-5)
  assert float(jnp.abs(y[1, 9:]).max()) == 0.0
  assert int(sown["moe"]["dropped"][0]) == 0
  np.testing.assert_allclose(sown["moe"]["load"][0].sum(), 1.0, rtol=1e-6)

  cotangent = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
  loss = lambda f: jax.jit(jax.grad(lambda p, x: jnp.sum(f(p, x) * cotangent), argnums=(0, 1)))
  got = loss(lambda p, x: module.apply({"params": p}, x, segment_ids, mutable=["moe"])[0])(
      params, x
  )
  want = loss(lambda p, x: reference(p, x, segment_ids, cfg))(params, x)
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want),
                          strict=True):
    np.testing.assert_allclose(g, w, atol=2e-5, rtol=1e-4, err_msg=jax.tree_util.keystr(path))


def test_dropless_equals_capacity_without_drops_and_adds_the_shared_expert(rng):
  """At a capacity that drops nothing the two dispatches agree (same parameters); a shared
  expert adds its SwiGLU output to the routed sum."""
  x = jnp.asarray(rng.standard_normal((2, 8, 32)), jnp.float32)
  segment_ids = jnp.ones((2, 8), jnp.int32).at[0, 6:].set(0)
  outs = {}
  for dispatch in ("dropless", "capacity"):
    cfg = moe_config(dispatch=dispatch, capacity_factor=4.0, shared_experts=1)
    module = MoE(ml_collections.FrozenConfigDict(cfg))
    params = nn.meta.unbox(module.init(jax.random.PRNGKey(2), x, segment_ids))["params"]
    outs[dispatch], sown = module.apply({"params": params}, x, segment_ids, mutable=["moe"])
    assert int(sown["moe"]["dropped"][0]) == 0
  np.testing.assert_allclose(outs["dropless"], outs["capacity"], atol=1e-5)
  assert "shared" in params
  routed = reference(params, x, segment_ids, moe_config())
  shared = nn.silu(x @ params["shared"]["gate"]["kernel"]) * (x @ params["shared"]["up"]["kernel"])
  np.testing.assert_allclose(
      outs["dropless"], routed + shared @ params["shared"]["down"]["kernel"], atol=1e-5
  )
