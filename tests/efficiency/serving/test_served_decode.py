"""Converted (served) int8 and int4 models decode from the KV cache exactly as they run in full."""

import numpy as np
import pytest

from efficiency.serving import export
from efficiency.serving.runner import Runner
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
