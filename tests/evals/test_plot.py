"""Plots of a sweep root are written as real PNG images."""

import subprocess
import sys

import matplotlib.image

from efficiency.workdir.runs import load_sweep


def test_plot_writes_pngs(sweep_root, tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "evals.plot", str(sweep_root), f"--out={tmp_path}"],
      capture_output=True, text=True, timeout=120,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  for name in ("loss_vs_tokens.png", "efficiency.png"):
    image = matplotlib.image.imread(tmp_path / name)
    assert image.shape[0] > 200 and image.shape[1] > 200
    assert image.std() > 0.01  # not blank


def test_load_sweep_reads_completed_and_failed_points(sweep_root):
  runs = {run.name: run for run in load_sweep(sweep_root)}
  assert runs["num_kv_heads-1"].summary["status"] == "completed"
  assert [r["step"] for r in runs["num_kv_heads-1"].eval_records] == [0, 10, 20]
  assert "num_kv_heads-3" not in runs  # it failed before writing anything


def test_plot_of_empty_root_is_an_error(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "evals.plot", str(tmp_path)], capture_output=True, text=True,
      timeout=60,
  )
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1] == (
      f"error: {tmp_path} holds no runs (no subdirectory with summary.json)"
  )
