"""evals.efficiency measures a workdir's training and writes efficiency.json with its methods."""

import json
import subprocess
import sys


def test_train_mode_writes_every_metric_with_how(sweep_root):
  workdir = sweep_root / "num_kv_heads-2"
  proc = subprocess.run(
      [sys.executable, "-m", "evals.efficiency", f"--workdir={workdir}", "--steps=4",
       "--interval=0.01"],
      capture_output=True, text=True, timeout=180,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((workdir / "efficiency.json").read_text())
  metrics = report["metrics"]
  assert set(metrics) == {"AMU", "PCU", "AL", "TT", "AEC", "MCR"}
  assert all(m["how"] for m in metrics.values())
  assert report["checkpoint"] == "restored" and report["steps"] == 4
  assert metrics["AMU"]["value"] > 1e6  # bytes: a Python process with jax holds far more
  assert 0 < metrics["PCU"]["value"] < 1
  # TT = tokens per parameter per second; each step has 4 x 32 full rows.
  expected_tt = 4 * 32 / report["param_count"] / metrics["AL"]["value"]
  assert abs(metrics["TT"]["value"] - expected_tt) / expected_tt < 1e-6
  if metrics["AEC"]["value"] is None:
    assert metrics["AEC"]["how"].startswith("time-average of null:")
  assert metrics["MCR"]["value"] is None


def test_unknown_mode_is_a_clear_error(sweep_root):
  proc = subprocess.run(
      [sys.executable, "-m", "evals.efficiency", f"--workdir={sweep_root}", "--mode=serve"],
      capture_output=True, text=True, timeout=60,
  )
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: --mode='serve' is invalid; valid choices: ['train']"
  )
