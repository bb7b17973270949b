"""A run killed once (kill -9, with a known number of unsaved steps) and resumed: the goodput
account adds up across both launches and counts the lost work; the profile window and the
offline W&B run (one run id over both launches) come out of the same run."""

import json
import os
import signal
import struct
import subprocess
import time

import pytest

from efficiency.train.goodput import PARTS
from efficiency.train.loop import _profile_window, train_and_evaluate
from efficiency.workdir.summary import Summary
from tests.helpers import ROOT, tiny_train_config, tiny_train_flags, train_command

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402

SETTINGS = {
    "steps": 150, "checkpoint_every": 5, "log_every": 1, "eval_every": 150,
    "profile.start_step": 140, "profile.steps": 3,
    "log.wandb": True, "log.wandb_project": "tests", "log.wandb_tags": "kill,resume",
}


def wandb_records(path) -> list:
  """The records of a W&B run file: a 7-byte header, then LevelDB-log blocks of 32 KiB whose
  chunks carry a 7-byte header (CRC, length, type: 1 full, 2 first, 3 middle, 4 last)."""
  data = path.read_bytes()
  assert data[:4] == b":W&B"
  records, pending, offset = [], b"", 7
  while offset + 7 <= len(data):
    left = 32768 - offset % 32768
    if left < 7:
      offset += left
      continue
    length, kind = struct.unpack("<HB", data[offset + 4:offset + 7])
    if length == 0 and kind == 0:
      break
    pending += data[offset + 7:offset + 7 + length]
    offset += 7 + length
    if kind in (1, 4):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      records.append(record)
      pending = b""
  return records


def _kill_with_unsaved_steps(workdir, flags, env) -> tuple[dict, float]:
  """Starts train.py, stops it (SIGSTOP) once its summary records a step past a checkpoint
  that is not itself saved, reads that summary, then kills it (SIGKILL). Returns the summary
  the killed launch left and the seconds from its start to the stop."""
  started = time.time()
  proc = subprocess.Popen(train_command(workdir, flags), cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  path = workdir / "summary.json"
  summary = {}
  try:
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
      try:
        launches = json.loads(path.read_text()).get("launches") or []
      except (OSError, ValueError):
        launches = []
      if launches and launches[-1]["end_step"] >= 12 and launches[-1]["end_step"] % 5:
        proc.send_signal(signal.SIGSTOP)
        stopped = time.time()
        summary = json.loads(path.read_text())
        break
      time.sleep(0.005)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
  assert summary, "the run ended before a step past a checkpoint was recorded"
  return summary, stopped - started


def test_killed_run_accounts_lost_work_and_resumes_its_wandb_run(
    tiny_corpus, fault_data_dir, tmp_path, monkeypatch
):
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  workdir = tmp_path / "work"
  flags = tiny_train_flags(tiny_corpus, fault_data_dir, **SETTINGS)
  killed, killed_wall = _kill_with_unsaved_steps(workdir, flags, dict(os.environ))
  [before] = killed["launches"]
  assert before["ended"] == "running"
  # The killed launch's record reaches to within a few percent of its real wall time.
  assert before["wall_s"] == pytest.approx(killed_wall, rel=0.1)

  config = tiny_train_config(tiny_corpus, fault_data_dir, **SETTINGS)
  called = time.time()
  summary = train_and_evaluate(config, workdir, launched_at=called)
  elapsed = time.time() - called

  restored = summary["resumed_from_step"]
  unsaved = before["end_step"] - restored
  assert summary["status"] == "completed" and 0 < unsaved < before["end_step"]
  died, resumed = summary["launches"]
  assert died["ended"] == "died" and died["lost_steps"] == unsaved
  assert resumed["ended"] == "completed" and resumed["start_step"] == restored
  assert resumed["end_step"] == config.steps and resumed["lost_steps"] == 0
  # The lost work is the killed launch's step time after the checkpoint the resume restored.
  train_at, wait_at = before["saves"][str(restored)]
  lost = (before["parts"]["train_steps"] - train_at) + (before["parts"]["data_wait"] - wait_at)
  breakdown = summary["time_breakdown"]
  assert set(breakdown) == set(PARTS)
  assert breakdown["lost_work"] == pytest.approx(lost) and lost > 0
  # ... about as long as the resumed launch took for as many steps (steps queued on the device
  # are charged when the log line reads their metrics, before the record is written).
  per_step = resumed["parts"]["train_steps"] / (config.steps - restored)
  assert 0.2 < lost / unsaved / per_step < 5
  # The parts add up to both launches' wall time, and that is the wall time the launches took.
  total = sum(breakdown.values())
  assert total == pytest.approx(died["wall_s"] + resumed["wall_s"])
  assert resumed["wall_s"] == pytest.approx(elapsed, rel=0.1)
  assert summary["goodput"] == pytest.approx(breakdown["train_steps"] / total)
  assert all(breakdown[p] > 0 for p in ("startup", "compile", "train_steps", "checkpoint"))

  # The profile window: the trace where TensorBoard reads it, profile_summary.json, the table's
  # top group in summary.json; a later launch does not capture it again.
  profile = json.loads((workdir / "profile_summary.json").read_text())
  assert profile["window"] == {"start_step": 140, "steps": 3} and profile["steps"] == 3
  assert list((workdir / "tensorboard" / "plugins" / "profile").glob("*/*.xplane.pb"))
  assert sum(g["time_s"] for g in profile["groups"].values()) == pytest.approx(
      profile["op_time_s"])
  assert summary["top_op_group"] == profile["top_group"]
  assert _profile_window(config, workdir, 0, Summary()).steps == 0

  # W&B: one run id, one offline run directory per launch, the metrics, config and summary.
  run_id = json.loads((workdir / "wandb_run.json").read_text())["id"]
  runs = sorted((workdir / "wandb").glob(f"offline-run-*-{run_id}"))
  assert len(runs) == 2
  records = wandb_records(runs[-1] / f"run-{run_id}.wandb")
  of = lambda kind: [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]
  history = [{_key(i): json.loads(i.value_json) for i in h.item} for h in of("history")]
  logged = [h for h in history if "loss" in h]
  assert {h["train_step"] for h in logged} >= {restored + 1, config.steps}
  assert logged[-1]["loss"] == pytest.approx(
      json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-2])["loss"])
  [run] = of("run")
  assert run.run_id == run_id and list(run.tags) == ["kill", "resume"]
  run_config = {_key(i): json.loads(i.value_json) for i in run.config.update}
  assert run_config["model"]["d_model"] == config.model.d_model
  summaries = [{_key(i) for i in s.update} for s in of("summary")]
  assert any("goodput" in keys and "time_breakdown" in keys for keys in summaries)


def _key(item) -> str:
  return item.key or "/".join(item.nested_key)
