"""evals.generate and evals.cos on the tiny sweep's trained workdirs (same tokenizer)."""

import json
import subprocess
import sys

import pytest

from tests.helpers import stderr_lines


def run(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                        timeout=timeout)


def test_greedy_generation_and_speculative_agree(sweep_root, tmp_path):
  target, draft = sweep_root / "num_kv_heads-2", sweep_root / "num_kv_heads-1"
  common = ["--prompt=def main(", "--prompt=import os\nx = 1", "--max_new_tokens=6",
            "--temperature=0"]
  plain = run("evals.generate", f"--workdir={target}", "--batch=2", *common)
  assert plain.returncode == 0, plain.stderr[-3000:]
  assert plain.stdout.count("---") == 2 and plain.stdout.startswith("def main(")
  streamed = run("evals.generate", f"--workdir={target}", "--batch=1", "--stream=2", *common)
  assert streamed.returncode == 0, streamed.stderr[-3000:]
  assert streamed.stdout == plain.stdout
  refused = run("evals.generate", f"--workdir={target}", "--stream=2", f"--draft={draft}",
                *common)
  assert refused.returncode != 0 and "--stream takes neither --draft" in refused.stderr
  report = tmp_path / "report.json"
  spec = run("evals.generate", f"--workdir={target}", f"--draft={draft}", *common,
             f"--report={report}")  # --gamma=auto: whatever it picks, greedy tokens are equal
  assert spec.returncode == 0, spec.stderr[-3000:]
  assert spec.stdout == plain.stdout
  assert "acceptance" in spec.stderr
  written = json.loads(report.read_text())
  assert written["batch"] == 8 and written["tokens"] == 12 and written["tokens_per_s"] > 0
  (plan,) = written["plans"]
  assert plan["plan"] == "standard" or plan["plan"][0] in range(1, 9)
  gamma = 0 if plan["plan"] == "standard" else plan["plan"][0]
  assert written["calls"]["draft"] == gamma * written["calls"]["target"]
  assert 0 <= plan["acceptance_estimate"] <= 1 and plan["predicted_tokens_per_s"] > 0
  assert plan["achieved_tokens_per_s"] > 0 and set(plan["call_costs_s"][0]) >= {"1", "2"}


@pytest.mark.slow
def test_cos_writes_report(sweep_root, tmp_path):
  models = f"{sweep_root / 'num_kv_heads-2'},{sweep_root / 'num_kv_heads-1'}"
  out = tmp_path / "cos_report.json"
  proc = run("evals.cos", f"--models={models}", "--method=we", "--num_prompts=1",
             "--prompt_tokens=8", "--max_new_tokens=4", "--gamma=2,1", f"--output={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report["same_tokens_as_standard"] == {"standard": True, "cos": True}
  assert "on_device" not in report["settings"] and report["settings"]["gamma"] == [2, 1]
  assert report["settings"]["weights"] == [0.5, 0.5]
  assert "speedup (CoS over standard)" in proc.stdout and report["plan"]["plan"] == [2, 1]
  auto = tmp_path / "auto.json"
  proc = run("evals.cos", f"--models={models}", "--num_prompts=1", "--prompt_tokens=8",
             "--max_new_tokens=4", f"--output={auto}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(auto.read_text())
  assert report["settings"]["gamma"] == "auto" and report["same_tokens_as_standard"]["cos"]
  assert {"plan", "call_costs_s", "acceptance_estimate", "predicted_tokens_per_s",
          "achieved_tokens_per_s"} <= set(report["plan"])
  proc = run("evals.cos", f"--models={models}", "--gamma=1,2,3", timeout=60)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: gamma=1,2,3 gives 3 proposal lengths for 2 models; give one, or one per model "
      "(or auto)")


def test_clear_errors(sweep_root):
  proc = run("evals.generate", f"--workdir={sweep_root}", "--prompt=x", timeout=60)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith(f"error: workdir='{sweep_root}' has no")
  models = f"{sweep_root / 'num_kv_heads-2'},{sweep_root / 'num_kv_heads-1'}"
  proc = run("evals.cos", f"--models={models}", "--weights=0.9,0.2", timeout=60)
  last = proc.stderr.strip().splitlines()[-1]
  assert last == "error: weights=[0.9, 0.2] must be >= 0 and sum to 1"
  proc = run("evals.cos", f"--models={models}", "--prompts=/nonexistent", timeout=60)
  assert proc.returncode == 1
  assert stderr_lines(proc.stderr) == ["error: prompts='/nonexistent' is not a file"]
  target = sweep_root / "num_kv_heads-2"
  seq_len = json.loads((target / "config.json").read_text())["seq_len"]
  proc = run("evals.generate", f"--workdir={target}", "--prompt=x", "--max_new_tokens=100000",
             timeout=60)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == (
      f"error: max_new_tokens=100000 exceeds the model's context of {seq_len} tokens")
  assert "Traceback" not in proc.stderr
