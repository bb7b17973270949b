"""Served models with an int8 or int4 embedding table (quant.embedding): no float table in the
params, bytes down by the table's float bytes less its codes and scales, the same logits as the
model holding the dequantized table in float (with int8 activations for a per-row table in a
model served int8, or int4 on int8 activations), greedy decoding on device equal to the host
loop, and one-line errors."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.default import get_config
from efficiency.config import resolve
from efficiency.errors import ConfigError
from efficiency.quant import table
from efficiency.serving import export
from efficiency.serving import generate as generate_lib
from efficiency.serving.loading import load_model, quant_setting
from efficiency.serving.sampling import Sampling
from efficiency.serving.speculative import speculate
from efficiency.workdir.restore import TrainedModel
from tests.efficiency.quant.int8_reference import int8_logits_reference
from tests.efficiency.serving.reference import host_generate
from tests.helpers import quant_batch, quant_config, tiny_model_config, trained_model

GREEDY = Sampling(temperature=0.0)
V, D = 97, 64  # quant_config's tiny model
# (kernel bits, table storage, group size, int4 activations): int8 kernels with an int8 table,
# int4 kernels with a per-group int4 table, int4 on int8 activations with a per-row int4 table,
# and (slow) the mixed case.
CASES = [(8, "int8", 0, "float"), (4, "int4", 16, "float"), (4, "int4", 0, "int8"),
         pytest.param(8, "int4", 0, "float", marks=pytest.mark.slow)]
CASE_NAMES = "bits,embedding,group_size,activations"


@functools.cache
def served(bits: int, embedding: str, group_size: int, activations: str = "float"
           ) -> TrainedModel:
  """The tiny model served at `bits` with its table per `embedding` (float32 float parts)."""
  trained = trained_model(quant_config(mode="int8" if bits == 8 else "none"))
  return export.convert(trained, bits, "float32", group_size, embedding, activations)


def served_pair(bits: int, embedding: str, group_size: int, activations: str
                ) -> tuple[TrainedModel, TrainedModel]:
  """The model served with its table quantized, and with its table float (same kernels)."""
  return (served(bits, embedding, group_size, activations),
          served(bits, "none", group_size, activations))


@pytest.mark.parametrize(CASE_NAMES, CASES)
def test_served_params_hold_codes_not_a_float_table(bits, embedding, group_size, activations):
  quantized, float_table = served_pair(bits, embedding, group_size, activations)
  embed = quantized.params["embed"]
  width, dtype = (D, jnp.int8) if embedding == "int8" else (D // 2, jnp.uint8)
  groups = D // group_size if group_size else 1
  assert set(embed) == {f"embedding_{embedding}", "embedding_scale"}
  assert embed[f"embedding_{embedding}"].shape == (V, width)
  assert embed[f"embedding_{embedding}"].dtype == dtype
  assert embed["embedding_scale"].shape == (V, groups)
  assert embed["embedding_scale"].dtype == jnp.float32
  floats = [x for x in jax.tree.leaves(quantized.params)
            if jnp.issubdtype(x.dtype, jnp.floating) and x.shape[-2:] == (V, D)]
  assert not floats
  assert quantized.config.quant.embedding == embedding  # make_model rebuilds it from the config
  saved = V * D * 4 - (V * width + V * groups * 4)  # float32 table - (codes + float32 scales)
  assert export.weight_bytes(float_table.params) - export.weight_bytes(quantized.params) == saved


def test_served_scales_stay_float32_in_a_bfloat16_model():
  cast = export._cast_floats(served(4, "int4", 16).params, jnp.bfloat16)
  assert cast["embed"]["embedding_scale"].dtype == jnp.float32
  assert cast["final_norm"]["scale"].dtype == jnp.bfloat16


def apply_with_final_hidden(m: TrainedModel, batch) -> tuple[np.ndarray, np.ndarray]:
  """The model's logits and the final norm's output (the tied logits' input)."""
  logits, state = m.model.apply({"params": m.params}, *batch, mutable=["intermediates"],
                                capture_intermediates=lambda mdl, _: mdl.name == "final_norm")
  return np.asarray(logits), np.asarray(state["intermediates"]["final_norm"]["__call__"][0])


@pytest.mark.parametrize(CASE_NAMES, CASES)
def test_logits_equal_the_model_holding_the_dequantized_table(bits, embedding, group_size,
                                                              activations):
  """The quantized lookup and factored tied logits compute what a float table of the
  dequantized values computes; against the original table the logits move (by at most the
  step's bound, checked on the table alone in tests/efficiency/quant/test_table.py). A per-row
  table in a model whose kernels run on int8 activations (served int8, or int4 on int8
  activations) also quantizes the logits' activations per token: there the logits equal the
  plain int8-activation product of the same final hidden states."""
  quantized, float_table = served_pair(bits, embedding, group_size, activations)
  embed = quantized.params["embed"]
  fake = dict(float_table.params)
  fake_VD = table.dequantize(embed[f"embedding_{embedding}"], embed["embedding_scale"],
                             table.BITS[embedding], jnp.float32)
  fake["embed"] = {"embedding": fake_VD}
  batch = quant_batch()
  got, hidden = apply_with_final_hidden(quantized, batch)
  want, want_hidden = apply_with_final_hidden(dataclasses.replace(float_table, params=fake),
                                              batch)
  np.testing.assert_allclose(hidden, want_hidden, atol=1e-4, rtol=1e-4)  # the lookup
  int8_kernels = bits == 8 or activations == "int8"
  if table.logits_on_int8_activations(embedding, embed["embedding_scale"].shape[1], int8_kernels):
    b, t, _ = hidden.shape
    codes_VD = table.codes_of(embed[f"embedding_{embedding}"], table.BITS[embedding])
    want = int8_logits_reference(hidden.reshape(b * t, D), codes_VD,
                                 embed["embedding_scale"]).reshape(b, t, V)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
  assert np.abs(got - apply_with_final_hidden(float_table, batch)[0]).max() > 1e-4  # quantized


@pytest.mark.parametrize(CASE_NAMES, CASES)
def test_on_device_greedy_decode_equals_host_loop(bits, embedding, group_size, activations):
  """The on-device loop (an int4 table unpacked once, at load: to float, or to int8 codes
  on int8 activations) against the host loop, which runs the served model's quantized lookup
  and logits at every step."""
  quantized = served(bits, embedding, group_size, activations)
  prompts = [np.array([5, 9, 2, 7], np.int32), np.array([3], np.int32)]
  args = (quantized.model, quantized.params, prompts, 8, GREEDY)
  got = generate_lib.generate(*args, eos_id=None)
  want = host_generate(*args, eos_id=None)
  for g, w in zip(got, want, strict=True):
    np.testing.assert_array_equal(g, w)


@pytest.mark.slow
@pytest.mark.parametrize("embedding", ["int8", "int4"])
def test_speculative_decoding_of_a_served_target_with_a_quantized_table(embedding):
  quantized = served(8, embedding, 0)
  draft = trained_model(quant_config(), seed=1)
  prompts = [np.array([5, 9, 2], np.int32), np.array([7], np.int32)]
  target = (quantized.model, quantized.params)
  expected = generate_lib.generate(*target, prompts, 12, GREEDY, None)
  out = speculate(target, (draft.model, draft.params), prompts, 12, GREEDY, 3, None)
  for got, want in zip(out.tokens, expected, strict=True):
    np.testing.assert_array_equal(got, want)


def test_bad_values_and_combinations_are_one_line_errors():
  config = get_config()
  config.model = tiny_model_config()
  config.quant.update(serve="int8", embedding="int2")
  with pytest.raises(ConfigError, match=r"^quant.embedding='int2' is invalid; valid choices: "
                                        r"\['none', 'int8', 'int4'\]$"):
    resolve(config, 1)
  config.quant.update(serve="none", embedding="int8")
  with pytest.raises(ConfigError, match=r"^quant.embedding='int8' is unsupported with "
                                        r"quant.serve='none'"):
    resolve(config, 1)
  trained = trained_model(quant_config())
  with pytest.raises(ConfigError, match=r"^embedding='fp8' is invalid; valid choices"):
    export.convert(trained, 8, embedding="fp8")
  with pytest.raises(ConfigError, match=r"^quant.embedding='int4' with quant.group_size=24 is "
                                        r"unsupported for model.d_model=64"):
    export.convert(trained, 4, group_size=24, embedding="int4")
  with pytest.raises(ConfigError, match=r"^quant_embedding='int8' is unsupported with quant=none"):
    load_model("unused", None, "int8")
  config.quant.update(serve="int4", embedding="none", int4_activations="int4")
  with pytest.raises(ConfigError, match=r"^quant.int4_activations='int4' is invalid; valid "
                                        r"choices: \['float', 'int8'\]$"):
    resolve(config, 1)
  with pytest.raises(ConfigError, match=r"^int4_activations='bf16' is invalid; valid choices"):
    export.convert(trained, 4, int4_activations="bf16")
  with pytest.raises(ConfigError, match=r"^int4_activations='int8' needs bits=4, got bits=8$"):
    export.convert(trained, 8, int4_activations="int8")
  assert [quant_setting(v) for v in ("none", "8", "4", "4a8")] == [
      (None, "float"), (8, "float"), (4, "float"), (4, "int8")]  # the decoding CLIs' --quant
  with pytest.raises(ConfigError, match=r"^quant='4a4' is invalid; valid choices: "
                                        r"\['none', '8', '4', '4a8'\]$"):
    quant_setting("4a4")
