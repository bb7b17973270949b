"""Decoding methods side by side (the CoS benchmark, `bench.compare`) on tiny random models."""

import numpy as np

from efficiency.serving import collaborate
from efficiency.serving.bench import compare, compare_table
from efficiency.serving.sampling import Sampling
from efficiency.serving.targets import Contrastive
from tests.helpers import tiny_model


def test_compare_reports_standard_and_cos():
  members = [tiny_model(0, vocab=11, layers=2), tiny_model(1, vocab=11)]
  prompts = [np.array([1, 2, 3], np.int32), np.array([4, 5, 6, 7, 8], np.int32)]
  report = compare(Contrastive(0.1, Sampling(0.0)), members, prompts, 12, gamma=2,
                   proposer=1, seed=0, eos_id=None)
  assert report["same_tokens_as_standard"] == {"standard": True, "cos": True}
  assert report["standard"]["tokens"] == report["cos"]["tokens"] == 24
  assert report["standard"]["tokens_per_call"] == 24 / 44  # 11 steps x 2 models per prompt
  assert report["standard"]["acceptance"] is None and report["standard"]["speedup"] == 1.0
  assert 0 < report["cos"]["acceptance"] <= 1 and report["cos"]["speedup"] > 0
  assert "cos" in compare_table(report) and "naive" not in compare_table(report)


def test_compare_with_auto_reports_its_plan(monkeypatch):
  monkeypatch.setattr(collaborate, "GRID", (1, 2))  # fewer call widths to calibrate
  members = [tiny_model(0, vocab=11, layers=2), tiny_model(1, vocab=11)]
  prompts = [np.array([1, 2, 3], np.int32), np.array([4, 5, 6, 7, 8], np.int32)]
  report = compare(Contrastive(0.1, Sampling(0.0)), members, prompts, 6, gamma="auto",
                   proposer=1, seed=0, eos_id=None)
  assert report["same_tokens_as_standard"] == {"standard": True, "cos": True}
  plan = report["plan"]
  assert plan["plan"] == "standard" or len(plan["plan"]) == 2
  assert 0 <= plan["acceptance_estimate"] <= 1 and len(plan["call_costs_s"]) == 2
  assert plan["predicted_tokens_per_s"] > 0 and plan["achieved_tokens_per_s"] > 0
