"""The goodput account: where every second of every launch of a run went.

A `Clock` charges the time since its last charge to one part of `PARTS`, so a launch's parts
add up to its wall time (from its start to its last charge) by construction. Each launch is one
record of summary.json's `launches`; `account` sums them into `time_breakdown` and `goodput`
(time in training steps over the wall time of all launches).

Lost work: a launch that died (killed, crashed) after its last checkpoint trained steps the next
launch trains again. The record keeps the launch's cumulative step time at every checkpoint it
saved, so when the next launch restores step R, the step time after R moves from `train_steps`
and `data_wait` to `lost_work` (`settle_lost_work`). A launch killed with `kill -9` keeps the
record it last wrote (the run writes it at every log line, evaluation and save); the seconds
after that are in no launch.
"""

import time

# startup: imports, mesh, model and optimizer set-up, restore, the peak FLOP/s look-up;
# data_prep: preparing or opening the data; compile: every train-step compile; train_steps: the
# steps (waiting on the device included); data_wait: waiting for batches; eval; checkpoint: the
# blocking part of saves and the wait for the last one to commit; profile: writing and reading
# a profile window's trace; lost_work: step time after a launch's last checkpoint, retrained.
PARTS = (
    "startup", "data_prep", "compile", "train_steps", "data_wait", "eval", "checkpoint",
    "profile", "lost_work",
)
RUNNING = "running"  # `ended` of a launch still going; found at a resume: it died


class Clock:
  """One launch's account, started at `started` (epoch seconds: the process's start for
  train.py, so imports count) at step `start_step`."""

  def __init__(self, started: float, start_step: int = 0):
    self.started = self.last = started
    self.parts = dict.fromkeys(PARTS, 0.0)
    self.start_step = self.step = start_step
    self.lost_steps = 0
    self.saves: dict[int, tuple[float, float]] = {}  # step -> (train_steps, data_wait) then

  def charge(self, part: str) -> float:
    """Adds the seconds since the last charge to `part`; returns them."""
    now = time.time()
    seconds, self.last = now - self.last, now
    self.parts[part] += seconds
    return seconds

  def saved(self, step: int) -> None:
    """Step `step` was checkpointed: its step time is safe from here on."""
    self.saves[step] = (self.parts["train_steps"], self.parts["data_wait"])

  def record(self, ended: str = RUNNING) -> dict:
    """This launch as a `launches` entry."""
    return {
        "start": self.started,
        "end": self.last,
        "ended": ended,
        "start_step": self.start_step,
        "end_step": self.step,
        "wall_s": self.last - self.started,
        "lost_steps": self.lost_steps,
        "parts": dict(self.parts),
        "saves": {str(step): list(times) for step, times in self.saves.items()},
    }


def settle_lost_work(launches: list[dict], restored_step: int) -> list[dict]:
  """`launches` with the ones a resume at `restored_step` trains again settled: a launch still
  `running` ended as `died`, and any launch's step time past `restored_step` is lost work."""
  settled = []
  for launch in launches:
    launch = {**launch, "parts": {**dict.fromkeys(PARTS, 0.0), **launch["parts"]}}
    if launch["ended"] == RUNNING:
      launch["ended"] = "died"
    if launch["end_step"] > restored_step and not launch.get("lost_settled"):
      parts = launch["parts"]
      at = launch["saves"].get(str(restored_step))
      train_at, wait_at = at if at and restored_step >= launch["start_step"] else (0.0, 0.0)
      lost_train = parts["train_steps"] - train_at
      lost_wait = parts["data_wait"] - wait_at
      parts["train_steps"] -= lost_train
      parts["data_wait"] -= lost_wait
      parts["lost_work"] += lost_train + lost_wait
      launch["lost_steps"] = launch["end_step"] - max(restored_step, launch["start_step"])
      launch["lost_settled"] = True
    settled.append(launch)
  return settled


def account(launches: list[dict]) -> dict:
  """summary.json's `time_breakdown` (seconds per part, over all launches), `goodput` and the
  wall time of all launches (`launches_wall_s`)."""
  breakdown = dict.fromkeys(PARTS, 0.0)
  for launch in launches:
    for part, seconds in launch["parts"].items():
      breakdown[part] = breakdown.get(part, 0.0) + seconds
  wall = sum(launch["wall_s"] for launch in launches)
  return {
      "time_breakdown": breakdown,
      "goodput": breakdown["train_steps"] / wall if wall > 0 else None,
      "launches_wall_s": wall,
  }
