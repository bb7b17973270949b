"""Converted (served) int8 and int4 models decode from the KV cache exactly as they run in full;
int4 unpacks its kernels and an int4 embedding table once per request, outside the decode
loop."""

import jax
import numpy as np
import pytest

from efficiency.serving import export
from efficiency.serving import generate as generate_lib
from efficiency.serving.runner import Runner
from efficiency.serving.sampling import Sampling
from tests.helpers import quant_config, trained_model

ATOL = 1e-4  # float32 logits; cached and full passes reduce in different orders


@pytest.mark.parametrize(
    "attention,bits", [("gqa", 8), pytest.param("mla", 8, marks=pytest.mark.slow), ("mla", 4)]
)
def test_served_model_cached_decode_matches_full_forward(attention, bits):
  config = quant_config(mode="int8" if bits == 8 else "none")
  config.model.attention = attention
  served = export.convert(trained_model(config), bits, "float32")
  tokens_BT = np.random.default_rng(0).integers(1, 97, size=(1, 12)).astype(np.int32)
  positions_BT = np.arange(12, dtype=np.int32)[None]
  full_BTV = np.asarray(served.model.apply(
      {"params": served.params}, tokens_BT, np.ones_like(tokens_BT), positions_BT))
  runner = Runner(served.model, served.params, batch=1, max_len=32)
  got = [runner.feed(tokens_BT[:, :6], np.array([0], np.int32))]
  got += [runner.feed(tokens_BT[:, i : i + 1], np.array([i], np.int32)) for i in range(6, 12)]
  np.testing.assert_allclose(np.concatenate(got, axis=1), full_BTV, atol=ATOL)


def _uint8_vars(jaxpr) -> int:
  """Variables of dtype uint8 in a jaxpr and every jaxpr nested in it."""
  count = sum(v.aval.dtype == np.uint8 for e in jaxpr.eqns for v in e.outvars)
  for eqn in jaxpr.eqns:
    for sub in jax.core.jaxprs_in_params(eqn.params):
      count += _uint8_vars(sub)
  return count


def test_int4_unpacks_once_per_request_not_per_token():
  """The decode loop of a packed int4 model holds no uint8 value: its kernels and its int4
  embedding table are unpacked before the while loop, once per request."""
  served = export.convert(trained_model(quant_config()), 4, "float32", embedding="int4")
  tokens_BP, lengths_B = generate_lib.pad_prompts([np.array([3, 5, 7], np.int32)])
  jitted = generate_lib.program(served.model, Sampling(0.0), 6, tokens_BP.shape[1] + 6)
  closed = jax.make_jaxpr(jitted)(served.params, tokens_BP, lengths_B, np.int32(-2),
                                  np.int32(0), np.arange(1, dtype=np.int32))
  calls = [e for e in closed.jaxpr.eqns if "jaxpr" in e.params]  # the jit call, if kept
  program = calls[0].params["jaxpr"].jaxpr if calls else closed.jaxpr
  loops = [e for e in program.eqns if e.primitive.name == "while"]
  assert len(loops) == 1
  assert _uint8_vars(loops[0].params["body_jaxpr"].jaxpr) == 0
  assert any(v.aval.dtype == np.uint8 for v in program.invars)  # the packed kernels come in
