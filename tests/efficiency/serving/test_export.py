"""Converting a trained model into a served int8 (AQT) or packed int4 one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficiency.errors import ConfigError
from efficiency.model.transformer import make_model
from efficiency.quant import pack
from efficiency.serving import export
from tests.helpers import quant_batch, quant_config, trained_model


def logits(config, params, rng=None):
  tokens, segment_ids, positions = quant_batch()
  rngs = {"quant": rng} if rng is not None else {}
  return make_model(config).apply({"params": params}, tokens, segment_ids, positions, rngs=rngs)


def test_excluded_layers_keep_float_weights_after_int8_conversion():
  trained = trained_model(quant_config(exclude="*/mlp/down"))
  served = export.convert(trained, 8, "float32").params["layers"]
  assert set(served["mlp"]["down"]) == {"kernel"}  # float kernel, no int8 copy
  assert served["mlp"]["down"]["kernel"].dtype == jnp.float32
  for name in ("gate", "up"):
    assert set(served["mlp"][name]) == {"aqt"}
  frozen = jax.tree.leaves(served["attn"]["query"]["aqt"])
  assert any(leaf.dtype == jnp.int8 for leaf in frozen)


def test_converted_int8_logits_match_training_graph():
  """AQT's promise: the frozen int8 model computes what the int8 training graph computed."""
  config = quant_config(mode="int8")
  trained = trained_model(config)
  train_graph = jax.jit(lambda p: logits(config, p, jax.random.PRNGKey(3)))(trained.params)
  served = export.convert(trained, 8, "float32")
  tokens, segment_ids, positions = quant_batch()
  out = served.model.apply({"params": served.params}, tokens, segment_ids, positions)
  np.testing.assert_allclose(out, train_graph, atol=1e-4, rtol=1e-4)
  assert export.weight_bytes(served.params) < export.weight_bytes(trained.params)


def test_converted_int4_matches_fake_quantized_float_model():
  config = quant_config()
  trained = trained_model(config)
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
  out = logits(served.config, served.params)
  # Attention kernels are int4 too in `served`: compare only where the MLP is what differs.
  mlp_only = quant_config(serve="int4", group_size=16, exclude="*/attn/*")
  served_mlp = {**served.params, "layers": {**served.params["layers"],
                                            "attn": trained.params["layers"]["attn"]}}
  out_mlp = logits(mlp_only, served_mlp)
  ref = logits(config, fake)
  np.testing.assert_allclose(out_mlp, ref, atol=1e-4, rtol=1e-4)
  assert float(jnp.max(jnp.abs(out - ref))) > 0  # the attention kernels are int4 as well


def test_export_rejects_bad_bits_and_dtype():
  trained = trained_model(quant_config())
  with pytest.raises(ConfigError, match="bits=3 is invalid"):
    export.convert(trained, 3)
  with pytest.raises(ConfigError, match="dtype='int8' is invalid"):
    export.convert(trained, 8, "int8")


@pytest.mark.slow
def test_untied_logits_projection_keeps_float_weights():
  """With quant.embedding an untied model quantizes its input table only."""
  config = quant_config()
  config.model.tie_embeddings = False
  served = export.convert(trained_model(config), 8, "float32", embedding="int8")
  assert set(served.params["unembed"]) == {"kernel"}
  assert served.params["unembed"]["kernel"].dtype == jnp.float32
  assert served.params["embed"]["embedding_int8"].dtype == jnp.int8
  tokens, segment_ids, positions = quant_batch()
  out = served.model.apply({"params": served.params}, tokens, segment_ids, positions)
  assert out.shape == (*tokens.shape, config.model.vocab_size)
