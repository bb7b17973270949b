"""Running a sweep: failures isolated, finished points skipped, results, the dry-run CLI."""

import csv
import subprocess
import sys

from efficiency import sweep as sweep_lib
from efficiency.workdir.runs import load_run


def test_failed_point_does_not_stop_the_others(sweep_root):
  for name in ("num_kv_heads-1", "num_kv_heads-2"):
    assert load_run(sweep_root / name).summary["status"] == "completed"
  with open(sweep_root / "results.csv") as f:
    rows = {row["point"]: row for row in csv.DictReader(f)}
  assert rows["num_kv_heads-3"]["status"] == "failed"
  assert "model.num_kv_heads=3 does not divide" in rows["num_kv_heads-3"]["error"]
  assert rows["num_kv_heads-1"]["status"] == "completed"
  assert float(rows["num_kv_heads-1"]["final_eval_loss"]) > 0
  # Per-technique cost: goodput from the run's account; the top op group needs a profile window.
  assert 0 < float(rows["num_kv_heads-1"]["goodput"]) < 1
  assert {"top_op_group", "top_op_group_share"} <= set(rows["num_kv_heads-1"])
  assert "| num_kv_heads-2 |" in (sweep_root / "results.md").read_text()


def test_rerun_skips_finished_points(sweep_root, sweep_file, capsys):
  before = (sweep_root / "num_kv_heads-1" / "metrics.jsonl").read_text()
  failed = sweep_lib.run_sweep(str(sweep_file), sweep_root, parallel=1)
  assert failed == 1  # the bad point fails again; the finished ones are not rerun
  assert (sweep_root / "num_kv_heads-1" / "metrics.jsonl").read_text() == before
  assert "num_kv_heads-1: skipped: already completed" in capsys.readouterr().out


def test_dry_run_prints_one_command_per_point_and_checks_each(sweep_file, tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "evals.sweep", f"--sweep={sweep_file}", f"--workdir={tmp_path}",
       "--dry_run"],
      capture_output=True, text=True, timeout=60,
  )
  assert proc.returncode == 1  # the point that cannot run is an error, before anything runs
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "model.num_kv_heads=3 does not divide" in errors[0]
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 2
  assert all("train.py" in line and "--config.model.num_kv_heads=" in line for line in lines)
  assert not list(tmp_path.iterdir())
