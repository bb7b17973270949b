"""The metric writer: JSON lines, non-finite values as strings, rewinding past a resumed step."""

import json
import math

from efficiency.workdir.runs import load_run
from efficiency.workdir.writer import MetricWriter


def test_records_are_json_lines_and_nonfinite_values_are_strings(tmp_path):
  writer = MetricWriter(tmp_path)
  writer.write(1, {"loss": 2.5, "grad_norm": math.nan, "lr": -math.inf})
  writer.write_summary({"status": "running", "mfu": math.inf})
  writer.close()
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert json.loads(lines[0]) == {"step": 1, "loss": 2.5, "grad_norm": "nan", "lr": "-inf"}
  assert json.loads((tmp_path / "summary.json").read_text()) == {"status": "running", "mfu": "inf"}
  record = load_run(tmp_path).records[0]
  assert math.isnan(record["grad_norm"]) and record["lr"] == -math.inf


def test_drop_after_removes_records_a_crash_left_unsaved(tmp_path):
  writer = MetricWriter(tmp_path)
  for step in range(1, 7):
    writer.write(step, {"loss": float(step)})
  writer.drop_after(4)
  writer.write(5, {"loss": 50.0})
  writer.close()
  records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r["loss"]) for r in records] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0),
                                                       (5, 50.0)]


def test_disabled_writer_writes_nothing(tmp_path):
  writer = MetricWriter(tmp_path / "w", enabled=False)
  writer.write(1, {"loss": 1.0})
  writer.drop_after(0)
  writer.close()
  assert not (tmp_path / "w").exists()
