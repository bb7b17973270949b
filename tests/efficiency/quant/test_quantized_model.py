"""Quantized Transformers: exclusions, the RNG stream, training and the quant config's checks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.default import get_config
from efficiency.config import resolve
from efficiency.errors import ConfigError
from efficiency.model.transformer import make_model
from efficiency.quant.einsum import is_quantized
from tests.helpers import init_params, quant_batch, quant_config


def logits(config, params, rng=None):
  tokens, segment_ids, positions = quant_batch()
  rngs = {"quant": rng} if rng is not None else {}
  apply = jax.jit(lambda p: make_model(config).apply(
      {"params": p}, tokens, segment_ids, positions, rngs=rngs))
  return apply(params)


def float_params(config=None):
  return init_params(make_model(config or quant_config()))


def test_quantized_logits_close_but_not_equal_to_float():
  params = float_params()
  ref = logits(quant_config(), params)
  out = logits(quant_config(mode="int8"), params)
  rel = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
  assert 1e-5 < rel < 0.06, rel  # per-layer int8 error (~1%) grows through 2 blocks


def test_excluding_every_layer_is_exactly_float():
  params = float_params()
  ref = logits(quant_config(), params)
  out = logits(quant_config(mode="int8", exclude="*"), params)
  np.testing.assert_array_equal(out, ref)


def test_exclusion_patterns_and_float_logits_by_default():
  quant = quant_config(mode="int8", exclude="*/mlp/*, */attn/out").quant
  assert is_quantized(quant, ("layers", "attn", "query"))
  assert not is_quantized(quant, ("layers", "attn", "out"))
  assert not is_quantized(quant, ("layers", "mlp", "down"))
  assert not is_quantized(quant, ("embed",), logits=True)
  assert is_quantized(quant_config(mode="int8", logits=True).quant, ("embed",), logits=True)


def test_logits_stay_float_unless_asked():
  params = float_params()
  everything_but_logits = "layers/*"
  ref = logits(quant_config(), params)
  np.testing.assert_array_equal(
      logits(quant_config(mode="int8", exclude=everything_but_logits), params), ref
  )
  out = logits(quant_config(mode="int8", exclude=everything_but_logits, logits=True), params)
  assert float(jnp.max(jnp.abs(out - ref))) > 0


@pytest.mark.parametrize("mode", ["int8"])  # int4: the full run in BENCHMARKS.md
def test_gradients_flow_loss_falls(mode):
  model = make_model(quant_config(mode=mode))
  params = init_params(model)
  tokens, segment_ids, positions = quant_batch(size=4)

  def loss_fn(p, key):
    out = model.apply({"params": p}, tokens, segment_ids, positions, rngs={"quant": key})
    return optax.softmax_cross_entropy_with_integer_labels(out[:, :-1], tokens[:, 1:]).mean()

  opt = optax.adam(1e-2)
  state = opt.init(params)
  step = jax.jit(jax.value_and_grad(loss_fn))
  losses = []
  for i in range(4):
    loss, grads = step(params, jax.random.PRNGKey(i))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    updates, state = opt.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    losses.append(float(loss))
  assert losses[-1] < losses[0] - 0.1, losses


def test_stochastic_rounding_uses_the_quant_rng():
  model = make_model(quant_config(mode="int8"))
  params = init_params(model)
  tokens, segment_ids, positions = quant_batch()

  @jax.jit
  def grad(key):
    loss = lambda p: model.apply(
        {"params": p}, tokens, segment_ids, positions, rngs={"quant": key}
    ).mean()
    return jax.grad(loss)(params)["layers"]["mlp"]["up"]["kernel"]

  g0, g0_again, g1 = grad(jax.random.PRNGKey(0)), grad(jax.random.PRNGKey(0)), grad(
      jax.random.PRNGKey(1))
  np.testing.assert_array_equal(g0, g0_again)
  assert float(jnp.max(jnp.abs(g0 - g1))) > 0
  assert not bool(jnp.all(g1[0] == g1[1]))  # nn.scan gives each layer its own noise


def test_bad_quant_config_is_one_line_error():
  config = get_config()
  config.quant.mode = "int3"
  with pytest.raises(ConfigError, match=r"quant.mode='int3' is invalid; valid choices"):
    resolve(config, 1, backend="cpu")
  config.quant.mode = "fp8"
  with pytest.raises(ConfigError, match=r"not supported by aqtp on backend 'tpu'"):
    resolve(config, 1, backend="tpu")
  resolved = resolve(config, 1, backend="cpu")
  assert make_model(resolved).quant.mode == "fp8"  # the model quantizes as the config says
  assert "quant" not in resolved.model  # read from the quant section, not copied into the model


@pytest.mark.parametrize("variant", [dict(attention="mla"), dict(moe_experts=2)])
def test_variants_quantize_every_projection(variant):
  """MLA (with its attention products quantized too) and MoE expert matmuls under int8."""
  def config(**quant):
    c = quant_config(**quant)
    c.model.attention = variant.get("attention", "gqa")
    c.model.moe.update(num_experts=variant.get("moe_experts", 0), dispatch="capacity")
    return c
  params = float_params(config())
  ref = logits(config(), params)
  out = logits(config(mode="int8", attention=True), params)
  rel = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
  assert 1e-5 < rel < 0.1, rel  # ~1% per int8 matmul; MLA chains 3 per path plus attention


@pytest.mark.slow
def test_untied_logits_projection_stays_float_by_default():
  def config(**quant):
    c = quant_config(**quant)
    c.model.tie_embeddings = False
    return c
  params = float_params(config())
  ref = logits(config(), params)
  np.testing.assert_array_equal(logits(config(mode="int8", exclude="layers/*"), params), ref)
