"""quant_report.json's fields: the export as requested (today's keys) and both variants of its
embedding table, whose bytes differ by the table's bf16 bytes less its codes and scales."""

import numpy as np
import pytest

from efficiency.serving.bench import quant_report
from tests.helpers import packed_batch, quant_config, trained_model

V, D = 97, 64


@pytest.mark.slow  # about 40 s: three exports evaluated and decoded
@pytest.mark.parametrize("embedding", ["none", "int8"])
def test_report_keeps_its_keys_and_adds_both_table_variants(embedding):
  config = quant_config(mode="int8")
  config.update(batch_size=2, seq_len=16)
  rng = np.random.default_rng(0)
  batches = [packed_batch(rng, config) for _ in range(2)]
  report = quant_report(trained_model(config), 8, "bfloat16", 0, batches,
                        batches[0]["inputs"][:1, :4], 2, embedding)
  for key in ("bits", "dtype", "group_size", "step", "scheme", "eval_loss", "accuracy", "mcr",
              "mcr_definition", "decode"):
    assert key in report
  assert {"before", "after", "baseline"} <= set(report["weight_bytes"])
  variants = report["embedding_variants"]
  assert set(variants) == {"none", "int8"} and report["embedding"] == embedding
  served = variants[embedding]
  assert served["weight_bytes"] == report["weight_bytes"]["after"]
  assert served["mcr"] == report["mcr"]
  assert served["table_bytes"] == report["weight_bytes"]["table_after"]
  assert variants["none"]["table_bytes"] == report["weight_bytes"]["table_before"] == V * D * 2
  assert variants["int8"]["table_bytes"] == V * D + V * 4  # int8 codes + float32 scales
  saved = variants["none"]["weight_bytes"] - variants["int8"]["weight_bytes"]
  assert saved == V * D * 2 - (V * D + V * 4)
