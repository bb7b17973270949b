"""The goodput account: a launch's parts add up to its wall time; lost work moves on resume."""

import pytest

from efficiency.train import goodput
from efficiency.train.goodput import PARTS, Clock, account, settle_lost_work


def test_clock_charges_every_second_to_one_part(monkeypatch):
  now = iter([101.0, 103.5, 110.0, 110.25])
  monkeypatch.setattr(goodput.time, "time", lambda: next(now))
  clock = Clock(started=100.0)
  clock.charge("startup")
  clock.charge("compile")
  clock.charge("train_steps")
  clock.charge("eval")
  record = clock.record()
  assert record["parts"]["startup"] == 1.0 and record["parts"]["compile"] == 2.5
  assert sum(record["parts"].values()) == pytest.approx(record["wall_s"]) == 10.25
  assert record["ended"] == "running"


def _launch(start_step, end_step, train, wait, saves, ended="running", wall=20.0):
  parts = dict.fromkeys(PARTS, 0.0)
  parts.update(train_steps=train, data_wait=wait, startup=wall - train - wait)
  return {"start": 0.0, "end": wall, "ended": ended, "start_step": start_step,
          "end_step": end_step, "wall_s": wall, "lost_steps": 0, "parts": parts,
          "saves": {str(k): list(v) for k, v in saves.items()}}


def test_resume_moves_step_time_after_the_restored_checkpoint_to_lost_work():
  died = _launch(0, 13, train=3.0, wait=0.3, saves={5: (1.0, 0.1), 10: (2.0, 0.2)})
  [settled] = settle_lost_work([died], restored_step=10)
  assert settled["ended"] == "died" and settled["lost_steps"] == 3
  assert settled["parts"]["lost_work"] == pytest.approx(1.1)
  assert settled["parts"]["train_steps"] == pytest.approx(2.0)
  assert settled["parts"]["data_wait"] == pytest.approx(0.2)
  assert sum(settled["parts"].values()) == pytest.approx(settled["wall_s"])
  # Settling twice (a third launch) moves nothing more.
  assert settle_lost_work([settled], restored_step=10) == [settled]


def test_a_launch_past_every_checkpoint_it_saved_loses_all_its_steps():
  done = _launch(0, 10, 2.0, 0.2, {10: (2.0, 0.2)}, ended="completed")
  died = _launch(10, 14, train=1.5, wait=0.5, saves={})
  settled = settle_lost_work([done, died], restored_step=10)
  assert settled[0] == {**done, "parts": settled[0]["parts"]}  # nothing lost before step 10
  assert settled[1]["lost_steps"] == 4 and settled[1]["parts"]["lost_work"] == pytest.approx(2.0)
  result = account(settled)
  assert sum(result["time_breakdown"].values()) == pytest.approx(result["launches_wall_s"])
  assert result["goodput"] == pytest.approx(2.0 / 40.0)
