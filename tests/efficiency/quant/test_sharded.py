"""int8 AQT training under nn.scan on 8 simulated CPU devices equals one device."""

import numpy as np

from tests.helpers import run_module

RTOL = 2e-3  # a sharded reduction can move a value across an int8 rounding boundary


def run_steps(devices: int, *args) -> dict:
  module = "tests.efficiency.train.sharded_steps"
  return run_module(module, *map(str, args), "--quant=int8", devices=devices)


def test_sharded_int8_training_equals_single_device():
  single = run_steps(1, 1, 1, 1)
  sharded = run_steps(8, 2, 2, 2)
  assert sharded["devices"] == 8 and sharded["mlp_gate_shards"] == 8
  np.testing.assert_allclose(sharded["losses"], single["losses"], rtol=RTOL)
  assert len(set(single["losses"])) == len(single["losses"])  # the steps really update
