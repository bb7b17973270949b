"""evals.efficiency measures a workdir's training and writes efficiency.json with its methods."""

import json
import subprocess
import sys

import pytest

from efficiency.model.flops import flops_per_token
from efficiency.serving.cache import cache_bytes
from efficiency.workdir.files import load_config


def test_train_mode_writes_every_metric_with_how(sweep_root):
  workdir = sweep_root / "num_kv_heads-2"
  proc = subprocess.run(
      [sys.executable, "-m", "evals.efficiency", f"--workdir={workdir}", "--steps=4",
       "--interval=0.01"],
      capture_output=True, text=True, timeout=180,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((workdir / "efficiency.json").read_text())["train"]
  metrics = report["metrics"]
  assert set(metrics) == {"AMU", "PCU", "AL", "TT", "ST", "AEC", "MCR"}
  assert all(m["how"] for m in metrics.values())
  assert report["checkpoint"] == "restored" and report["steps"] == 4
  assert metrics["AMU"]["value"] > 1e6  # bytes: a Python process with jax holds far more
  assert 0 < metrics["PCU"]["value"] < 1
  # TT = tokens per parameter per second; each step has 4 x 32 full rows.
  expected_tt = 4 * 32 / report["param_count"] / metrics["AL"]["value"]
  assert abs(metrics["TT"]["value"] - expected_tt) / expected_tt < 1e-6
  expected_st = 4 / report["param_count"] / metrics["AL"]["value"]
  assert abs(metrics["ST"]["value"] - expected_st) / expected_st < 1e-6
  if metrics["AEC"]["value"] is None:
    assert metrics["AEC"]["how"].startswith("time-average of null:")
  assert metrics["MCR"]["value"] is None
  # XLA's count of the compiled step: the model's matmul FLOPs (6 N + attention per token) plus
  # elementwise work; the step's temporaries hold at least the activations of one layer.
  config = load_config(workdir)
  model_flops = flops_per_token(config.model, config.seq_len) * config.batch_size * config.seq_len
  assert 0.9 * model_flops <= report["step_flops"] <= 2 * model_flops
  activations = config.batch_size * config.seq_len * config.model.d_model * 4
  assert report["step_temp_bytes"] >= activations


def test_unknown_mode_is_a_clear_error(sweep_root):
  proc = subprocess.run(
      [sys.executable, "-m", "evals.efficiency", f"--workdir={sweep_root}", "--mode=serve"],
      capture_output=True, text=True, timeout=60,
  )
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: --mode='serve' is invalid; valid choices: ['train', 'infer']"
  )


def test_infer_mode_measures_kv_cache_generation_and_keeps_train_section(sweep_root):
  workdir = sweep_root / "num_kv_heads-1"
  for mode in ("train", "infer"):
    proc = subprocess.run(
        [sys.executable, "-m", "evals.efficiency", f"--workdir={workdir}", f"--mode={mode}",
         "--steps=3", "--interval=0.01", "--batch=2", "--prompt_len=8", "--new_tokens=5",
         "--profile_start_step=2", "--profile_steps=2"],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "top op" in proc.stdout  # the profile table
  sections = json.loads((workdir / "efficiency.json").read_text())
  assert set(sections) == {"train", "infer"}
  # Both modes profiled iterations 2..3: the train step and the decode loop's XLA ops.
  for mode in ("train", "infer"):
    profile = sections[mode]["profile"]
    assert profile["steps"] == 2 and profile["op_time_s"] > 0
    assert sum(g["time_s"] for g in profile["groups"].values()) == pytest.approx(
        profile["op_time_s"])
  assert sections["train"]["profile"]["groups"]["matmul"]["time_s"] > 0
  assert len(list((workdir / "tensorboard" / "plugins" / "profile").glob("*/*.xplane.pb"))) == 2
  report = sections["infer"]
  metrics = report["metrics"]
  assert set(metrics) == {"AMU", "PCU", "AL", "IT", "AEC", "MCR"}
  assert all(m["how"] for m in metrics.values())
  # IT = generated tokens / seconds; every request generates 2 rows x 5 tokens (no EOS stop).
  expected_it = 2 * 5 / metrics["AL"]["value"]
  assert abs(metrics["IT"]["value"] - expected_it) / expected_it < 1e-6
  assert metrics["AMU"]["value"] > 1e6
  # The cache a request allocates: 2 rows x (8 prompt + 5 new) positions of every entry.
  assert report["kv_cache_bytes"] == cache_bytes(load_config(workdir).model, 2, 8 + 5)


def test_infer_mode_rejects_bad_sizes(sweep_root):
  proc = subprocess.run(
      [sys.executable, "-m", "evals.efficiency", f"--workdir={sweep_root / 'num_kv_heads-1'}",
       "--mode=infer", "--new_tokens=0"],
      capture_output=True, text=True, timeout=120,
  )
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: batch=1, prompt_len=64 and new_tokens=0 must all be >= 1"
  )
