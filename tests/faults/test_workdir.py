"""The workdir: one run at a time (the lock), no resume with a config that changes shapes or
data order, and filesystem problems (a file in the way, read-only, disk full) as one line that
names the path, with the committed checkpoints kept."""

import errno
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from efficiency.errors import ConfigError, StorageError
from efficiency.train import checkpoint
from efficiency.train.loop import train_and_evaluate
from efficiency.workdir import files
from efficiency.workdir.lock import WorkdirLock, WorkdirLockedError
from tests.helpers import assert_same_run, tiny_train_config


def _write_lock(workdir, pid: int, host: str | None = None) -> None:
  workdir.mkdir(parents=True, exist_ok=True)
  record = {"pid": pid, "host": host or socket.gethostname(), "started": "earlier"}
  (workdir / "lock").write_text(json.dumps(record))


def test_a_live_run_holds_the_workdir(fault_config, tmp_path):
  workdir = tmp_path / "work"
  owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    _write_lock(workdir, owner.pid)
    with pytest.raises(WorkdirLockedError, match=f"in use by pid {owner.pid} on host"):
      train_and_evaluate(fault_config, workdir)
  finally:
    owner.kill()
    owner.wait()
  assert sorted(p.name for p in workdir.iterdir()) == ["lock"]  # nothing else was written


def test_two_runs_cannot_share_a_workdir(tmp_path):
  with WorkdirLock(tmp_path):
    with pytest.raises(WorkdirLockedError, match=str(os.getpid())), WorkdirLock(tmp_path):
      pass
  assert not (tmp_path / "lock").exists()


def test_stale_locks_are_taken_over(tmp_path):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  _write_lock(tmp_path, dead.pid)  # same host, process gone
  with WorkdirLock(tmp_path):
    assert json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()
  _write_lock(tmp_path, 1, host="another-host")
  os.utime(tmp_path / "lock", (0, 0))  # not refreshed for decades
  with WorkdirLock(tmp_path):
    assert json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()
  _write_lock(tmp_path, 1, host="another-host")  # refreshed just now: alive elsewhere
  with pytest.raises(WorkdirLockedError, match="another-host"), WorkdirLock(tmp_path):
    pass


def test_resume_with_a_different_model_fails_before_writing(tiny_corpus, fault_data_dir,
                                                            reference_copy):
  workdir = reference_copy
  before = {name: (workdir / name).read_bytes() for name in ("config.json", "metrics.jsonl",
                                                              "summary.json")}
  config = tiny_train_config(tiny_corpus, fault_data_dir, **{"model.d_model": 64, "seed": 3})
  with pytest.raises(ConfigError, match=r"model\.d_model=64 \(saved: 32\).*seed=3 \(saved: 0\)"):
    train_and_evaluate(config, workdir)
  after = {name: (workdir / name).read_bytes() for name in before}
  assert after == before and not (workdir / "lock").exists()


def test_resume_may_change_steps_and_cadence(tiny_corpus, fault_data_dir, reference_run,
                                             tmp_path):
  """A run stopped at 20 steps, resumed with a new eval cadence and more steps, is the
  uninterrupted run: the schedule follows `steps`, so the first leg is trained with 40."""
  workdir = tmp_path / "work"
  shutil.copytree(reference_run, workdir)
  shutil.rmtree(workdir / "checkpoints" / "40")
  summary = json.loads((workdir / "summary.json").read_text())
  files.write_json_atomic(workdir / "summary.json", {**summary, "status": "interrupted"})
  config = tiny_train_config(tiny_corpus, fault_data_dir, log_every=5, keep_checkpoints=3)
  train_and_evaluate(config, workdir)
  assert_same_run(workdir, reference_run)


@pytest.mark.parametrize("layout,message", [
    ("empty", "--workdir is empty"),
    ("file", "is a file, not a directory"),
    ("parent_file", "a parent of it is a file"),
])
def test_unusable_workdir_is_one_error(layout, message, fault_config, tmp_path):
  workdir = {"empty": "", "file": tmp_path / "f", "parent_file": tmp_path / "f" / "work"}[layout]
  (tmp_path / "f").write_text("a file")
  with pytest.raises(ConfigError, match=message):
    train_and_evaluate(fault_config, workdir)


@pytest.fixture
def small_tmpfs(tmp_path):
  """A 16 MiB tmpfs (the suite runs as root on CI machines); skips where it cannot be mounted."""
  mount = tmp_path / "tmpfs"
  mount.mkdir()
  proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                        capture_output=True)
  if proc.returncode:
    pytest.skip("cannot mount a tmpfs here; the patched-writer test covers a full disk")
  yield mount
  subprocess.run(["umount", "-l", str(mount)], check=False)


def test_read_only_workdir_is_one_error(fault_config, small_tmpfs):
  subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
  with pytest.raises(ConfigError, match="is not writable|cannot be created"):
    train_and_evaluate(fault_config, small_tmpfs / "work")


def _allocated(folder) -> int:
  return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


def test_full_disk_is_one_error_and_keeps_committed_checkpoints(fault_config, reference_run,
                                                               small_tmpfs):
  """A real full disk: the workdir fits the first checkpoint, not the second."""
  workdir = small_tmpfs / "work"
  filler = small_tmpfs / "filler"
  one_checkpoint = _allocated(reference_run / "checkpoints" / "20")
  rest = _allocated(reference_run) - 2 * one_checkpoint
  free = shutil.disk_usage(small_tmpfs).free
  filler.write_bytes(b"\0" * (free - rest - int(1.5 * one_checkpoint)))
  with pytest.raises(StorageError, match=f"cannot write .*{small_tmpfs}.*No space left"):
    train_and_evaluate(fault_config, workdir)
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["status"] == "failed"
  assert files.checkpoint_steps(workdir) and not list((workdir / "checkpoints").glob("*tmp*"))
  filler.unlink()
  train_and_evaluate(fault_config, workdir)
  assert json.loads((workdir / "summary.json").read_text())["status"] == "completed"


def test_disk_full_during_a_save_is_one_error(fault_config, reference_run, monkeypatch,
                                               tmp_path):
  """The same through a patched writer (no tmpfs needed): the save of step 40 hits ENOSPC."""
  workdir = tmp_path / "work"
  original = checkpoint.save

  def save(manager, state, *args, **kwargs):
    if int(state.step) == 40:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(manager.directory / "40"))
    return original(manager, state, *args, **kwargs)

  monkeypatch.setattr(checkpoint, "save", save)
  with pytest.raises(StorageError, match=r"cannot write .*checkpoints/40.*No space left"):
    train_and_evaluate(fault_config, workdir)
  assert json.loads((workdir / "summary.json").read_text())["status"] == "failed"
  assert files.checkpoint_steps(workdir) == [20] and not (workdir / "lock").exists()
  monkeypatch.setattr(checkpoint, "save", original)
  train_and_evaluate(fault_config, workdir)
  assert_same_run(workdir, reference_run)
