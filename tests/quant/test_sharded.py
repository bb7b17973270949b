"""int8 AQT training under nn.scan on 8 simulated CPU devices equals one device."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
RTOL = 2e-3  # a sharded reduction can move a value across an int8 rounding boundary


def run_steps(devices: int, *mesh: int) -> dict:
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  proc = subprocess.run(
      [sys.executable, "-m", "tests.efficiency.sharded_steps", *map(str, mesh), "--quant=int8"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sharded_int8_training_equals_single_device():
  single = run_steps(1, 1, 1, 1)
  sharded = run_steps(8, 2, 2, 2)
  assert sharded["devices"] == 8 and sharded["mlp_gate_shards"] == 8
  np.testing.assert_allclose(sharded["losses"], single["losses"], rtol=RTOL)
  assert len(set(single["losses"])) == len(single["losses"])  # the steps really update
