"""Quantized Transformers: exclusions, the RNG stream, training and int8/int4 conversion."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs.default import get_config
from efficiency.config import ConfigError, _check_quant
from efficiency.model.transformer import Transformer
from efficiency.quant import export, pack
from efficiency.quant.einsum import is_quantized
from efficiency.train.restore import TrainedModel
from tests.quant.common import batch, init_params, quant_model_config


def logits(cfg, params, rng=None):
  tokens, segment_ids, positions = batch()
  rngs = {"quant": rng} if rng is not None else {}
  apply = jax.jit(lambda p: Transformer(cfg).apply(
      {"params": p}, tokens, segment_ids, positions, rngs=rngs))
  return apply(params)


def test_quantized_logits_close_but_not_equal_to_float():
  params = init_params(quant_model_config())
  ref = logits(quant_model_config(), params)
  out = logits(quant_model_config(mode="int8"), params)
  rel = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
  assert 1e-5 < rel < 0.06, rel  # per-layer int8 error (~1%) grows through 2 blocks


def test_excluding_every_layer_is_exactly_float():
  params = init_params(quant_model_config())
  ref = logits(quant_model_config(), params)
  out = logits(quant_model_config(mode="int8", exclude="*"), params)
  np.testing.assert_array_equal(out, ref)


def test_exclusion_patterns_and_float_logits_by_default():
  quant = quant_model_config(mode="int8", exclude="*/mlp/*, */attn/out").quant
  assert is_quantized(quant, ("layers", "attn", "query"))
  assert not is_quantized(quant, ("layers", "attn", "out"))
  assert not is_quantized(quant, ("layers", "mlp", "down"))
  assert not is_quantized(quant, ("embed",), logits=True)
  assert is_quantized(quant_model_config(mode="int8", logits=True).quant, ("embed",), logits=True)


def test_excluded_layers_keep_float_weights_after_int8_conversion():
  cfg = quant_model_config(exclude="*/mlp/down")
  trained = _trained(cfg)
  served = export.convert(trained, 8, "float32").params["layers"]
  assert set(served["mlp"]["down"]) == {"kernel"}  # float kernel, no int8 copy
  assert served["mlp"]["down"]["kernel"].dtype == jnp.float32
  for name in ("gate", "up"):
    assert set(served["mlp"][name]) == {"aqt"}
  frozen = jax.tree.leaves(served["attn"]["query"]["aqt"])
  assert any(leaf.dtype == jnp.int8 for leaf in frozen)


def test_logits_stay_float_unless_asked():
  params = init_params(quant_model_config())
  everything_but_logits = "layers/*"
  ref = logits(quant_model_config(), params)
  np.testing.assert_array_equal(
      logits(quant_model_config(mode="int8", exclude=everything_but_logits), params), ref
  )
  out = logits(quant_model_config(mode="int8", exclude=everything_but_logits, logits=True), params)
  assert float(jnp.max(jnp.abs(out - ref))) > 0


def _trained(cfg) -> TrainedModel:
  config = get_config()
  config.model = ml_collections.ConfigDict(cfg.to_dict())
  config.quant = ml_collections.ConfigDict(cfg.quant.to_dict())
  model = Transformer(cfg)
  return TrainedModel(config, model, init_params(cfg), step=0, workdir=None)


def test_converted_int8_logits_match_training_graph():
  """AQT's promise: the frozen int8 model computes what the int8 training graph computed."""
  cfg = quant_model_config(mode="int8")
  trained = _trained(cfg)
  train_graph = logits(cfg, trained.params, jax.random.PRNGKey(3))
  served = export.convert(trained, 8, "float32")
  tokens, segment_ids, positions = batch()
  out = served.model.apply({"params": served.params}, tokens, segment_ids, positions)
  np.testing.assert_allclose(out, train_graph, atol=1e-4, rtol=1e-4)
  assert export.weight_bytes(served.params) < export.weight_bytes(trained.params)


def test_converted_int4_matches_fake_quantized_float_model():
  cfg = quant_model_config()
  trained = _trained(cfg)
  served = export.convert(trained, 4, "float32", group_size=16)
  fake = jax.tree.map(lambda x: x, trained.params)
  for name in ("gate", "up", "down"):
    layer = served.params["layers"]["mlp"][name]
    spec = {"down": "btf,fd->btd"}.get(name, "btd,df->btf")
    shape = trained.params["layers"]["mlp"][name]["kernel"].shape[1:]
    fake["layers"]["mlp"][name]["kernel"] = jax.vmap(
        lambda p, s, spec=spec, shape=shape: pack.dequantize_int4(p, s, spec, shape,
                                                                     jnp.float32)
    )(layer["kernel_int4"], layer["kernel_scale"])
    assert layer["kernel_int4"].dtype == jnp.uint8
  tokens, segment_ids, positions = batch()
  out = served.model.apply({"params": served.params}, tokens, segment_ids, positions)
  # Attention kernels are int4 too in `served`: compare only where the MLP is what differs.
  cfg_mlp_only = quant_model_config(serve="int4", group_size=16, exclude="*/attn/*")
  served_mlp = {**served.params, "layers": {**served.params["layers"],
                                            "attn": trained.params["layers"]["attn"]}}
  out_mlp = Transformer(cfg_mlp_only).apply({"params": served_mlp}, tokens, segment_ids,
                                            positions)
  ref = Transformer(cfg).apply({"params": fake}, tokens, segment_ids, positions)
  np.testing.assert_allclose(out_mlp, ref, atol=1e-4, rtol=1e-4)
  assert float(jnp.max(jnp.abs(out - ref))) > 0  # the attention kernels are int4 as well


@pytest.mark.parametrize("mode", ["int8"])  # int4: the full run in BENCHMARKS.md
def test_gradients_flow_loss_falls(mode):
  cfg = quant_model_config(mode=mode)
  params = init_params(cfg)
  tokens, segment_ids, positions = batch(size=4)
  model = Transformer(cfg)

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
  cfg = quant_model_config(mode="int8")
  params = init_params(cfg)
  tokens, segment_ids, positions = batch()

  @jax.jit
  def grad(key):
    loss = lambda p: Transformer(cfg).apply(
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
    _check_quant(config, "cpu")
  config.quant.mode = "fp8"
  with pytest.raises(ConfigError, match=r"not supported by aqtp on backend 'tpu'"):
    _check_quant(config, "tpu")
  _check_quant(config, "cpu")
  assert config.model.quant.mode == "fp8"  # copied where the layers read it


def test_export_rejects_bad_bits_and_dtype():
  trained = _trained(quant_model_config())
  with pytest.raises(ConfigError, match="bits=3 is invalid"):
    export.convert(trained, 3)
  with pytest.raises(ConfigError, match="dtype='int8' is invalid"):
    export.convert(trained, 8, "int8")


@pytest.mark.parametrize("variant", [dict(attention="mla"), dict(moe_experts=2)])
def test_variants_quantize_every_projection(variant):
  """MLA (with its attention products quantized too) and MoE expert matmuls under int8."""
  def cfg(**quant):
    base = quant_model_config(**quant)
    c = ml_collections.ConfigDict(base.to_dict())
    c.attention = variant.get("attention", "gqa")
    c.moe.num_experts = variant.get("moe_experts", 0)
    return ml_collections.FrozenConfigDict(c)
  params = init_params(cfg())
  ref = logits(cfg(), params)
  out = logits(cfg(mode="int8", attention=True), params)
  rel = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
  assert 1e-5 < rel < 0.1, rel  # ~1% per int8 matmul; MLA chains 3 per path plus attention


@pytest.mark.slow
def test_untied_logits_projection_stays_float_by_default():
  def cfg(**quant):
    c = ml_collections.ConfigDict(quant_model_config(**quant).to_dict())
    c.tie_embeddings = False
    return ml_collections.FrozenConfigDict(c)
  params = init_params(cfg())
  ref = logits(cfg(), params)
  np.testing.assert_array_equal(logits(cfg(mode="int8", exclude="layers/*"), params), ref)
  served = export.convert(_trained(cfg()), 8, "float32").params
  assert set(served["unembed"]) == {"kernel"}
