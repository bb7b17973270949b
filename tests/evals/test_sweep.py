"""Sweeps: grid expansion, point names, failures isolated, finished points skipped, results."""

import csv
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from evals import sweep as sweep_lib
from evals.runs import load_run


def test_grid_expands_to_cartesian_product_plus_points():
  points = sweep_lib.expand(dict(
      base="configs/default.py",
      grid={"model.attention": ["gqa", "mqa"], "seed": [0, 1]},
      points=[{"model.attention": "mha", "seed": 7}],
      overrides={"steps": 5},
  ))
  assert [p.name for p in points] == [
      "attention-gqa__seed-0", "attention-gqa__seed-1", "attention-mqa__seed-0",
      "attention-mqa__seed-1", "attention-mha__seed-7",
  ]
  assert points[1].overrides == {"steps": 5, "model.attention": "gqa", "seed": 1}


def test_point_names_are_filesystem_safe():
  assert sweep_lib.point_name({"data.corpus_root": "/a b/c", "model.qkv_bias": True}) == (
      "corpus_root-_a_b_c__qkv_bias-true"
  )
  assert sweep_lib.point_name({}) == "base"


def test_bad_sweeps_are_clear_errors():
  with pytest.raises(ValueError, match=r"sweep keys \['grid'\] are invalid; it needs 'base'"):
    sweep_lib.expand({"grid": {}})
  with pytest.raises(ValueError, match=r"share names \['seed-1'\]"):
    sweep_lib.expand({"base": "b", "points": [{"seed": 1}, {"seed": 1}]})


def test_failed_point_does_not_stop_the_others(sweep_root):
  for name in ("num_kv_heads-1", "num_kv_heads-2"):
    assert load_run(sweep_root / name).summary["status"] == "completed"
  with open(sweep_root / "results.csv") as f:
    rows = {row["point"]: row for row in csv.DictReader(f)}
  assert rows["num_kv_heads-3"]["status"] == "failed"
  assert "model.num_kv_heads=3 does not divide" in rows["num_kv_heads-3"]["error"]
  assert rows["num_kv_heads-1"]["status"] == "completed"
  assert float(rows["num_kv_heads-1"]["final_eval_loss"]) > 0
  assert "| num_kv_heads-2 |" in (sweep_root / "results.md").read_text()


def test_rerun_skips_finished_points(sweep_root, sweep_file, capsys):
  before = (sweep_root / "num_kv_heads-1" / "metrics.jsonl").read_text()
  failed = sweep_lib.run_sweep(str(sweep_file), sweep_root, parallel=1)
  assert failed == 1  # the bad point fails again; the finished ones are not rerun
  assert (sweep_root / "num_kv_heads-1" / "metrics.jsonl").read_text() == before
  assert "num_kv_heads-1: skipped: already completed" in capsys.readouterr().out


def test_dry_run_prints_one_command_per_point(sweep_file, tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "evals.sweep", f"--sweep={sweep_file}", f"--workdir={tmp_path}",
       "--dry_run"],
      capture_output=True, text=True, timeout=60, check=True,
  )
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 3
  assert all("train.py" in line and "--config.model.num_kv_heads=" in line for line in lines)
  assert not list(tmp_path.iterdir())


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "path", sorted((ROOT / "configs" / "sweeps").glob("*.py")), ids=lambda p: p.stem
)
def test_shipped_sweeps_name_real_config_fields(path):
  sweep = sweep_lib.load_sweep_file(str(path))
  base_path, _, arg = sweep["base"].partition(":")
  config = runpy.run_path(str(ROOT / base_path))["get_config"](arg or None)
  for point in sweep_lib.expand(sweep):
    for field_name in point.overrides:
      node = config
      for part in field_name.split("."):
        assert part in node, f"{path.name}: point {point.name} sets unknown field {field_name}"
        node = node[part]
