"""Sharded training on 8 simulated CPU devices equals training on one device."""

import numpy as np
import pytest

from tests.helpers import run_module

RTOL = 1e-4  # float32; sharded reductions sum in a different order


def run_steps(devices: int, *args) -> dict:
  return run_module("tests.efficiency.train.sharded_steps", *map(str, args), devices=devices)


def test_sharded_losses_equal_single_device():
  """Sharded over data, fsdp and tensor with the chunked attention kernel (16-token rows in
  blocks of 4) against one device with the XLA reference attention."""
  single = run_steps(1, 1, 1, 1, "--attention_impl=xla")
  sharded = run_steps(8, 2, 2, 2, "--attention_impl=chunked", "--block=4")
  assert sharded["devices"] == 8 and single["devices"] == 1
  np.testing.assert_allclose(sharded["losses"], single["losses"], rtol=RTOL)
  assert single["losses"][-1] < single["losses"][0]  # it trains
  # Parameters and optimizer state really are split: FSDP over embed, tensor over mlp.
  assert sharded["mlp_gate"] == [None, "fsdp", "tensor"]
  assert sharded["adam_mu_gate"] == sharded["mlp_gate"]
  assert sharded["mlp_gate_shards"] == 8


@pytest.mark.slow
def test_sharded_xla_attention_equals_single_device():
  single = run_steps(1, 1, 1, 1, "--attention_impl=xla")
  sharded = run_steps(8, 2, 2, 2, "--attention_impl=xla")
  np.testing.assert_allclose(sharded["losses"], single["losses"], rtol=RTOL)


def test_expert_parallel_dropless_moe_equals_single_device():
  """Dropless MoE, 4 experts one per device of expert=4 (with fsdp=2): tokens gathered over the
  expert group and reduce-scattered back under shard_map give the single device's losses."""
  single = run_steps(1, 1, 1, 1, 1, 4)
  sharded = run_steps(8, 1, 2, 1, 4, 4)
  np.testing.assert_allclose(sharded["losses"], single["losses"], rtol=RTOL)
  assert sharded["mlp_gate"] == [None, "expert", "fsdp", "tensor"]  # layers, expert, embed, mlp
  assert sharded["mlp_gate_shards"] == 8


@pytest.mark.slow  # four more subprocesses; run with `scripts/test.sh -m slow`
@pytest.mark.parametrize("dispatch", ["dropless", "capacity"])
def test_expert_parallel_moe_equals_single_device(dispatch):
  """4 experts split over expert=2 (with data=2, tensor=2): same losses as one device."""
  single = run_steps(1, 1, 1, 1, 1, 4, f"--dispatch={dispatch}")
  sharded = run_steps(8, 2, 1, 2, 2, 4, f"--dispatch={dispatch}")
  np.testing.assert_allclose(sharded["losses"], single["losses"], rtol=RTOL)
  assert sharded["mlp_gate"] == [None, "expert", "fsdp", "tensor"]  # layers, expert, embed, mlp
  assert sharded["mlp_gate_shards"] == 8
