"""The decode form is made once, when the served model is loaded (`weights.to_decode_form`):
the compiled request only reads it, so its temporaries hold the KV cache and activations, not a
second copy of the weights (asserted on the compiled program's memory analysis)."""

import jax
import numpy as np
import pytest

from efficiency.model.transformer import make_model
from efficiency.serving import export
from efficiency.serving import generate as generate_lib
from efficiency.serving.request import pad_prompts
from efficiency.serving.sampling import Sampling
from efficiency.serving.weights import decode_form, to_decode_form
from efficiency.workdir.restore import TrainedModel
from tests.helpers import init_params, quant_config

GREEDY = Sampling(0.0)
NEW = 4


@pytest.fixture(scope="module")
def scanned():
  """A 2-layer scanned model whose weights (about 2 MB) dwarf a short request's cache."""
  config = quant_config()
  config.model.update(num_layers=2, d_model=128, d_ff=512, scan_layers=True)
  model = make_model(config)
  return TrainedModel(config, model, init_params(model), step=0, workdir=None)


def weight_bytes(params: dict) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))


def temp_bytes(jitted, params: dict) -> int:
  """The compiled request's temporaries (bytes) for one 3-token prompt."""
  tokens_BP, lengths_B = pad_prompts([np.array([3, 5, 7], np.int32)])
  compiled = jitted.lower(params, tokens_BP, lengths_B, np.int32(-2), np.int32(0),
                          np.zeros(1, np.int32)).compile()
  return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("bits", [None, 4])
def test_the_request_holds_no_second_copy_of_the_weights(scanned, bits):
  served = export.convert(scanned, bits, "float32") if bits else scanned
  model, params = to_decode_form(served.model, served.params)
  assert not model.config.scan_layers and "layers_1" in params
  max_len = 4 + NEW
  temps = temp_bytes(generate_lib.program(model, GREEDY, NEW, max_len), params)
  assert temps < 0.2 * weight_bytes(params), (temps, weight_bytes(params))
  # The form the requests used to take, converting inside the jitted request, holds a copy.
  stored, unpack = decode_form(served.model)
  per_request = jax.jit(lambda p, *args: generate_lib._generate(
      stored, GREEDY, NEW, max_len, unpack(p), *args))
  assert temp_bytes(per_request, served.params) > 0.9 * weight_bytes(params)


def test_conversion_is_once_and_keeps_the_tokens(scanned):
  model, params = to_decode_form(scanned.model, scanned.params)
  again = to_decode_form(model, params)
  assert again[0] is model and again[1] is params  # a decode form comes back as it is
  prompts = [np.array([3, 5, 7], np.int32), np.array([9, 2], np.int32)]
  expected = generate_lib.generate(scanned.model, scanned.params, prompts, NEW, GREEDY, None)
  got = generate_lib.generate(model, params, prompts, NEW, GREEDY, None)
  for e, g in zip(expected, got, strict=True):
    np.testing.assert_array_equal(e, g)
