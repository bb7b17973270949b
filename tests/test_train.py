"""End-to-end `train.py`: the workdir contract, resume after interruption, rerun after the end."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from efficiency.errors import ConfigError
from efficiency.workdir.restore import restore
from tests.helpers import (
  ROOT,
  final_params,
  read_metrics,
  run_train,
  tiny_train_flags,
  train_command,
)

METRIC_KEYS = {"step", "tokens_seen", "loss", "lr", "tokens_per_sec", "mfu", "grad_norm"}
SUMMARY_KEYS = {
    "status", "steps", "tokens_seen", "target_loss", "tokens_to_target", "final_eval_loss",
    "tokens_per_sec", "mfu", "peak_memory_bytes", "param_count", "mesh", "devices",
    "process_count", "compile_time_s", "wall_time_s", "data_wait_fraction",
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_corpus) -> Path:
  """One uninterrupted tiny run, shared by the tests that read its outputs."""
  workdir = tmp_path_factory.mktemp("run") / "work"
  data_dir = tmp_path_factory.mktemp("data")
  run_train(workdir, tiny_train_flags(tiny_corpus, data_dir))
  return workdir


def test_run_writes_the_workdir_contract(finished_run):
  summary = json.loads((finished_run / "summary.json").read_text())
  assert SUMMARY_KEYS <= summary.keys()
  assert summary["status"] == "completed" and summary["steps"] == 40
  assert summary["process_count"] == 1 and summary["devices"] == 1
  assert 0 < summary["mfu"] < 1 and summary["tokens_per_sec"] > 0
  # The MFU denominator says what it was measured on and how.
  assert summary["peak_flops_key"].startswith("v2|") and "cores=" in summary["peak_flops_key"]
  assert summary["peak_flops_measurement"]["flops"] * summary["process_count"] == (
      summary["peak_flops"]
  )
  assert summary["tokens_to_target"] is not None  # from about log(512) = 6.24 to below 6.0
  assert summary["final_eval_loss"] < np.log(512)
  # What `model.attention_impl=auto` picked for these short rows, and the step's scratch memory.
  assert summary["attention_impl"] == "xla"
  assert summary["step_temp_bytes"] > 0

  metrics = read_metrics(finished_run)
  train_rows = [m for m in metrics if "loss" in m]
  eval_rows = [m for m in metrics if "eval_loss" in m]
  assert all(METRIC_KEYS <= m.keys() for m in train_rows)
  assert [m["step"] for m in train_rows] == list(range(5, 41, 5))
  assert [m["step"] for m in eval_rows] == [0, 20, 40]
  assert all("eval_bpb" in m for m in eval_rows)
  # tokens_seen counts real targets only: less than batch x seq_len per step, and increasing.
  seen = [m["tokens_seen"] for m in train_rows]
  assert seen == sorted(seen) and seen[-1] <= 40 * 4 * 32
  assert summary["tokens_seen"] == seen[-1]
  # tokens_to_target is the tokens_seen of the first eval at or below the target.
  first = next(m for m in eval_rows if m["eval_loss"] <= summary["target_loss"])
  assert summary["tokens_to_target"] == first["tokens_seen"]

  assert (finished_run / "config.json").exists()
  report = json.loads((finished_run / "data_report.json").read_text())
  assert report["splits"]["train"]["documents"] > 0 and report["filters"] == []
  assert list((finished_run / "tensorboard").glob("events.out.tfevents.*"))
  assert sorted(p.name for p in (finished_run / "checkpoints").iterdir() if p.name.isdigit()) == [
      "20", "40"
  ]


def test_rerun_on_a_finished_workdir_does_not_retrain(finished_run, tiny_corpus, tmp_path):
  before = read_metrics(finished_run)
  proc = run_train(finished_run, tiny_train_flags(tiny_corpus, tmp_path / "data"))
  assert read_metrics(finished_run) == before
  assert "done: 40 steps" in proc.stdout


def test_interrupted_run_resumes_to_identical_result(finished_run, tiny_corpus, tmp_path):
  """SIGTERM mid-run saves a checkpoint; rerunning ends bitwise equal to the uninterrupted run."""
  workdir = tmp_path / "work"
  flags = tiny_train_flags(tiny_corpus, tmp_path / "data")
  proc = subprocess.Popen(
      train_command(workdir, flags), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True,
  )
  deadline = time.time() + 300
  metrics_file = workdir / "metrics.jsonl"
  while time.time() < deadline:  # interrupt once training is under way, before it ends
    if metrics_file.exists() and '"step": 10' in metrics_file.read_text():
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=300)
  summary = json.loads((workdir / "summary.json").read_text())
  assert proc.returncode != 0 and "interrupted" in stderr, stderr[-3000:]
  assert summary["status"] == "interrupted" and 10 <= summary["steps"] < 40
  stopped_at = summary["steps"]

  run_train(workdir, flags)
  resumed = json.loads((workdir / "summary.json").read_text())
  reference = json.loads((finished_run / "summary.json").read_text())
  assert resumed["resumed_from_step"] == stopped_at
  assert resumed["final_eval_loss"] == reference["final_eval_loss"]
  assert resumed["tokens_seen"] == reference["tokens_seen"]
  assert resumed["tokens_to_target"] == reference["tokens_to_target"]
  losses = {m["step"]: m["loss"] for m in read_metrics(workdir) if "loss" in m}
  reference_losses = {m["step"]: m["loss"] for m in read_metrics(finished_run) if "loss" in m}
  assert losses == reference_losses
  leaves = lambda tree: [np.asarray(x) for x in jax.tree.leaves(tree)]
  for x, y in zip(leaves(final_params(workdir)), leaves(final_params(finished_run)), strict=True):
    np.testing.assert_array_equal(x, y)


def test_bad_corpus_root_is_one_line_error(tmp_path):
  proc = subprocess.run(
      train_command(tmp_path / "w", [f"--config.data.corpus_root={tmp_path / 'missing'}"]),
      cwd=ROOT, capture_output=True, text=True, timeout=120, env=dict(os.environ),
  )
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert "data.corpus_root" in proc.stderr.strip().splitlines()[-1]


def test_restore_loads_final_params(finished_run, tmp_path):
  trained = restore(finished_run)
  assert trained.step == 40
  expected = final_params(finished_run)
  jax.tree.map(np.testing.assert_array_equal, trained.params, expected)
  tokens = np.arange(12, dtype=np.int32).reshape(1, 12) % trained.config.model.vocab_size
  logits = trained.model.apply({"params": trained.params}, tokens, np.ones_like(tokens),
                               np.arange(12)[None])
  assert logits.shape == (1, 12, trained.config.model.vocab_size)
  with pytest.raises(ConfigError, match="has no config.json"):
    restore(tmp_path)
  (tmp_path / "config.json").write_text((finished_run / "config.json").read_text())
  with pytest.raises(ConfigError, match="has no checkpoint"):
    restore(tmp_path)
  with pytest.raises(ConfigError, match="step=7 is not saved"):
    restore(finished_run, step=7)


def test_a_distilled_student_trains_toward_its_teacher(finished_run, tiny_corpus, tmp_path):
  """A smaller model distilled from the finished run (`distill.teacher`) takes its tokenizer,
  logs the KL to it each step, and moves toward it."""
  workdir = tmp_path / "student"
  flags = tiny_train_flags(
      tiny_corpus, tmp_path / "data", steps=12, log_every=2, eval_every=12, checkpoint_every=12,
      **{"model.num_layers": 1, "model.d_model": 16, "model.num_heads": 2,
         "model.num_kv_heads": 1, "model.d_ff": 32, "optimizer.lr": 1e-2,
         "distill.teacher": finished_run, "distill.weight": 0.9},
  )
  run_train(workdir, flags)
  config = json.loads((workdir / "config.json").read_text())
  assert config["data"]["tokenizer_from"] == str(finished_run)
  kls = [m["distill_kl"] for m in read_metrics(workdir) if "distill_kl" in m]
  assert len(kls) == 6 and all(np.isfinite(kls))
  assert kls[-1] < 0.8 * kls[0]
  assert json.loads((workdir / "summary.json").read_text())["status"] == "completed"
