"""Converted (served) int8 and int4 models decode from the KV cache exactly as they run in full;
int4 turns its packed kernels into jnp.int4 values and unpacks an int4 embedding table once per
request, outside the decode loop, which reads 4-bit kernels; int4 on int8 activations (W4A8)
unpacks kernels and table once into int8 codes, which the loop reads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficiency.serving import export
from efficiency.serving import generate as generate_lib
from efficiency.serving.request import pad_prompts
from efficiency.serving.sampling import Sampling
from efficiency.serving.weights import to_decode_form
from tests.efficiency.serving.reference import Runner, host_generate
from tests.helpers import quant_config, trained_model

ATOL = 1e-4  # float32 logits; cached and full passes reduce in different orders


@pytest.mark.parametrize("attention,bits,activations", [
    ("gqa", 8, "float"), pytest.param("mla", 8, "float", marks=pytest.mark.slow),
    ("mla", 4, "float"), pytest.param("gqa", 4, "int8", marks=pytest.mark.slow),
])
def test_served_model_cached_decode_matches_full_forward(attention, bits, activations):
  config = quant_config(mode="int8" if bits == 8 else "none")
  config.model.attention = attention
  served = export.convert(trained_model(config), bits, "float32", int4_activations=activations)
  tokens_BT = np.random.default_rng(0).integers(1, 97, size=(1, 12)).astype(np.int32)
  positions_BT = np.arange(12, dtype=np.int32)[None]
  full_BTV = np.asarray(served.model.apply(
      {"params": served.params}, tokens_BT, np.ones_like(tokens_BT), positions_BT))
  runner = Runner(served.model, served.params, batch=1, max_len=32)
  got = [runner.feed(tokens_BT[:, :6], np.array([0], np.int32))]
  got += [runner.feed(tokens_BT[:, i : i + 1], np.array([i], np.int32)) for i in range(6, 12)]
  np.testing.assert_allclose(np.concatenate(got, axis=1), full_BTV, atol=ATOL)


def _vars_of(jaxpr, dtype) -> int:
  """Variables of `dtype` made in a jaxpr and every jaxpr nested in it."""
  count = sum(v.aval.dtype == dtype for e in jaxpr.eqns for v in e.outvars)
  for eqn in jaxpr.eqns:
    for sub in jax.core.jaxprs_in_params(eqn.params):
      count += _vars_of(sub, dtype)
  return count


def _int4_model(form: str):
  """A packed int4 model (int4 table too) decoding in `form`: a quant.int4_decode value, or
  `int8` for int4 on int8 activations (quant.int4_activations)."""
  config = quant_config(int4_decode="float" if form == "int8" else form)
  return export.convert(trained_model(config), 4, "float32", embedding="int4",
                        int4_activations="int8" if form == "int8" else "float")


@pytest.mark.parametrize("form", ["s4", "float", "int8"])
def test_int4_unpacks_once_at_load_not_per_request(form):
  """The request of a packed int4 model holds no uint8 value: its kernels enter it as jnp.int4
  values, dequantized inside each step (`s4`), as float kernels (`float`) or as int8 codes
  (`int8`, on int8 activations), and its int4 embedding table as a float one (int8 codes under
  `int8`), all made once when the served model is loaded (`weights.to_decode_form`)."""
  served = _int4_model(form)
  model, params = to_decode_form(served.model, served.params)
  tokens_BP, lengths_B = pad_prompts([np.array([3, 5, 7], np.int32)])
  jitted = generate_lib.program(model, Sampling(0.0), 6, tokens_BP.shape[1] + 6)
  closed = jax.make_jaxpr(jitted)(params, tokens_BP, lengths_B, np.int32(-2),
                                  np.int32(0), np.arange(1, dtype=np.int32))
  calls = [e for e in closed.jaxpr.eqns if "jaxpr" in e.params]  # the jit call, if kept
  program = calls[0].params["jaxpr"].jaxpr if calls else closed.jaxpr
  loops = [e for e in program.eqns if e.primitive.name == "while"]
  assert len(loops) == 1
  body = loops[0].params["body_jaxpr"].jaxpr
  assert _vars_of(body, np.uint8) == 0
  int4_inputs = sum(v.aval.dtype == jnp.int4 for v in body.invars)
  assert int4_inputs >= 4 if form == "s4" else int4_inputs == 0  # the layers' kernels
  int8_inputs = sum(v.aval.dtype == jnp.int8 for v in body.invars)
  assert int8_inputs >= 5 if form == "int8" else int8_inputs == 0  # kernels and table
  assert not any(v.aval.dtype == np.uint8 for v in program.invars)  # unpacked at load


def test_int4_forms_decode_the_same_tokens_as_the_host_loop():
  """Greedy on-device decoding of a packed int4 model in each form equals the host loop, which
  runs the packed model as it is (unpacking in every call): weight-only for `s4` and `float`,
  on int8 activations for `int8`."""
  prompts = [np.array([3, 5, 7], np.int32), np.array([9, 1], np.int32)]
  for forms in (("s4", "float"), ("int8",)):
    served = _int4_model(forms[0])
    expected = host_generate(served.model, served.params, prompts, 8, Sampling(0.0), None)
    assert any(len(set(e.tolist())) > 1 for e in expected)
    for form in forms:
      model = _int4_model(form)
      got = generate_lib.generate(model.model, model.params, prompts, 8, Sampling(0.0), None)
      for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e, err_msg=form)
