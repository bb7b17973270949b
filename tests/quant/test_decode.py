"""Converted (served) int8 and int4 models decode from the KV cache exactly as they run in full."""

import ml_collections
import numpy as np
import pytest

from efficiency.decode.runner import Runner
from efficiency.quant import export
from tests.quant.common import quant_model_config
from tests.quant.test_model import _trained

ATOL = 1e-4  # float32 logits; cached and full passes reduce in different orders


@pytest.mark.parametrize(
    "attention,bits", [("gqa", 8), pytest.param("mla", 8, marks=pytest.mark.slow), ("mla", 4)]
)
def test_served_model_cached_decode_matches_full_forward(attention, bits):
  cfg = quant_model_config(mode="int8" if bits == 8 else "none")
  cfg = ml_collections.FrozenConfigDict({**cfg.to_dict(), "attention": attention})
  served = export.convert(_trained(cfg), bits, "float32")
  tokens_BT = np.random.default_rng(0).integers(1, 97, size=(1, 12)).astype(np.int32)
  positions_BT = np.arange(12, dtype=np.int32)[None]
  full_BTV = np.asarray(served.model.apply(
      {"params": served.params}, tokens_BT, np.ones_like(tokens_BT), positions_BT))
  runner = Runner(served.model, served.params, batch=1, max_len=32)
  got = [runner.feed(tokens_BT[:, :6], np.array([0], np.int32))]
  got += [runner.feed(tokens_BT[:, i : i + 1], np.array([i], np.int32)) for i in range(6, 12)]
  np.testing.assert_allclose(np.concatenate(got, axis=1), full_BTV, atol=ATOL)
