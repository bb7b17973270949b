"""kill -9 at random points of train.py: each rerun resumes from the newest committed checkpoint
and the run ends bit for bit as the uninterrupted one (3 kills by default, 10 under -m slow)."""

import random
import signal
import subprocess
import time

import pytest

from efficiency.train.loop import train_and_evaluate
from tests.helpers import ROOT, assert_same_run, tiny_train_flags, train_command


def _kill_at_random_points(kills: int, tiny_corpus, fault_data_dir, workdir) -> list[list[str]]:
  """Starts train.py `kills` times on `workdir`, each time killing it (SIGKILL) a random delay
  after its first logged step; returns the steps the workdir held after each kill."""
  rng = random.Random(kills)
  flags = tiny_train_flags(tiny_corpus, fault_data_dir, checkpoint_every=5)
  held = []
  for _ in range(kills):
    proc = subprocess.Popen(train_command(workdir, flags), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    metrics = workdir / "metrics.jsonl"
    while time.time() < deadline and proc.poll() is None:
      if metrics.exists() and '"loss"' in metrics.read_text():
        break
      time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 1.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    held.append(sorted(p.name for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()))
  return held


@pytest.mark.parametrize("kills", [3, pytest.param(10, marks=pytest.mark.slow)])
def test_kill_9_at_random_points_resumes_bitwise(
    kills, fault_config, reference_run, tiny_corpus, fault_data_dir, tmp_path
):
  workdir = tmp_path / "work"
  held = _kill_at_random_points(kills, tiny_corpus, fault_data_dir, workdir)
  newest = [max(map(int, steps), default=0) for steps in held]
  assert newest == sorted(newest)  # no kill loses a committed checkpoint
  # Orbax deletes the oldest step after the newest commits; a kill in between leaves one extra.
  assert all(len(steps) <= fault_config.keep_checkpoints + 1 for steps in held)
  assert (workdir / "lock").exists()  # a killed run leaves its lock; the rerun finds it stale
  config = fault_config.copy_and_resolve_references()
  config.checkpoint_every = 5
  train_and_evaluate(config, workdir)
  assert_same_run(workdir, reference_run)
