"""A PEFT fine-tune sharded over 8 simulated devices equals the 1-device run."""

import numpy as np
import pytest

from tests.helpers import run_module


def run_steps(devices: int, *args) -> dict:
  return run_module("tests.efficiency.peft.sharded_steps", *map(str, args), devices=devices)


def test_sharded_dora_on_int8_base_equals_single_device():
  single = run_steps(1, "dora", "int8", "1", "1", "1")
  sharded = run_steps(8, "dora", "int8", "2", "2", "2")
  assert sharded["devices"] == 8 and single["devices"] == 1
  np.testing.assert_allclose(sharded["losses"], single["losses"], rtol=1e-4)
  assert single["losses"][-1] < single["losses"][0]
  # Adapters follow the base kernel's logical axes: A [layers, embed, r], B [layers, r, mlp].
  assert sharded["lora_a"] == [None, "fsdp", None]
  assert sharded["lora_b"] == [None, None, "tensor"]
  assert sharded["lora_b_shards"] == 8


@pytest.mark.slow  # two 8-device subprocesses per method; run with `-m slow`
@pytest.mark.parametrize("method,base_quant,adapter_layers",
                         [("freeze", "none", 0), ("lora", "int4", 1)])
def test_sharded_split_scan_and_int4_base_equal_single_device(method, base_quant, adapter_layers):
  """The frozen-prefix scan (freeze's, and below adapters on the last layer, here over int4
  codes) and the replicated int4 base shard like the rest."""
  single = run_steps(1, method, base_quant, "1", "1", "1", adapter_layers)
  sharded = run_steps(8, method, base_quant, "2", "2", "2", adapter_layers)
  np.testing.assert_allclose(sharded["losses"], single["losses"], rtol=1e-4)
  assert single["losses"][-1] < single["losses"][0]
