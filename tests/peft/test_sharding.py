"""A PEFT fine-tune sharded over 8 simulated devices equals the 1-device run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def run_steps(devices: int, *args: str) -> dict:
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  proc = subprocess.run(
      [sys.executable, "-m", "tests.peft.sharded_peft_steps", *args],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


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
