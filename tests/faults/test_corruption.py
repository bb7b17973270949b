"""A damaged newest checkpoint (or metrics.jsonl) is skipped: the run resumes from the newest
checkpoint that restores, moves the damaged one aside, and ends as the uninterrupted run."""

import json
import shutil
from pathlib import Path

import pytest

from efficiency.train.checkpoint import CorruptCheckpointError
from efficiency.train.loop import train_and_evaluate
from efficiency.workdir import files
from tests.helpers import assert_same_run


def _largest_file(folder: Path) -> Path:
  return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _truncate(path: Path) -> None:
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(path: Path) -> None:
  data = bytearray(path.read_bytes())
  for i in range(0, len(data), max(len(data) // 64, 1)):
    data[i] ^= 0xFF
  path.write_bytes(bytes(data))


DAMAGES = {
    "truncated_state_data": lambda step: _truncate(_largest_file(step / "state")),
    "flipped_state_bytes": lambda step: _flip(_largest_file(step / "state")),
    "no_state_metadata": lambda step: (step / "state" / "_METADATA").unlink(),
    "no_state": lambda step: shutil.rmtree(step / "state"),
    "no_data": lambda step: shutil.rmtree(step / "data"),
    "truncated_progress": lambda step: _truncate(_largest_file(step / "progress")),
}
FAST = ("truncated_state_data", "no_state", "truncated_progress")


@pytest.mark.parametrize(
    "damage", [pytest.param(d, marks=() if d in FAST else pytest.mark.slow) for d in DAMAGES]
)
def test_damaged_newest_checkpoint_falls_back(damage, fault_config, reference_run,
                                              reference_copy):
  workdir = reference_copy
  DAMAGES[damage](workdir / "checkpoints" / "40")
  train_and_evaluate(fault_config, workdir)
  assert_same_run(workdir, reference_run)
  assert files.checkpoint_steps(workdir) == [20, 40]
  aside = list((workdir / "checkpoints_corrupt").iterdir())
  assert [p.name.split("-")[0] for p in aside] == ["40"]


def test_every_checkpoint_damaged_is_one_error_and_moves_nothing(fault_config, reference_copy):
  workdir = reference_copy
  for step in (20, 40):
    shutil.rmtree(workdir / "checkpoints" / str(step) / "state")
  before = (workdir / "metrics.jsonl").read_text()
  with pytest.raises(CorruptCheckpointError, match="step 40.*step 20"):
    train_and_evaluate(fault_config, workdir)
  assert files.checkpoint_steps(workdir) == [20, 40]
  assert (workdir / "metrics.jsonl").read_text() == before


def test_torn_last_metrics_line_is_dropped(fault_config, reference_run, reference_copy):
  """What a crash mid-write leaves: the last line cut short."""
  workdir = reference_copy
  shutil.rmtree(workdir / "checkpoints" / "40")
  summary = json.loads((workdir / "summary.json").read_text())
  files.write_json_atomic(workdir / "summary.json", {**summary, "status": "running"})
  with (workdir / "metrics.jsonl").open("a") as f:
    f.write('{"step": 41, "loss": 5.2')
  train_and_evaluate(fault_config, workdir)
  assert_same_run(workdir, reference_run)
