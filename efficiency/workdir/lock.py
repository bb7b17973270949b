"""The workdir lock: one run at a time per workdir.

WORKDIR/lock holds the owner's pid, host and start time; a thread refreshes its mtime while the
run lives. A lock is stale when its owner is on this host and no longer running, or when it has
not been refreshed for `STALE_AFTER_S` (an owner on another host that died); a stale lock is taken
over with a warning. In a multi-process job only process 0 takes it.
"""

import json
import os
import socket
import threading
import time
from pathlib import Path

from absl import logging

from efficiency.errors import ConfigError

LOCK = "lock"
REFRESH_S = 10.0
STALE_AFTER_S = 120.0


class WorkdirLockedError(ConfigError):
  """Another live run holds the workdir."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's process
    return True
  return True


class WorkdirLock:
  """Holds WORKDIR/lock for the duration of a `with` block (a no-op when not `enabled`)."""

  def __init__(self, workdir: str | Path, enabled: bool = True):
    self.path = Path(workdir) / LOCK
    self.enabled = enabled
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def __enter__(self) -> "WorkdirLock":
    if self.enabled:
      self._acquire()
      self._thread = threading.Thread(target=self._refresh, daemon=True, name="workdir-lock")
      self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    if not self.enabled:
      return
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    owner = self._owner() or {}
    if {"pid": owner.get("pid"), "host": owner.get("host")} == self._me():
      self.path.unlink(missing_ok=True)

  def _me(self) -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname()}

  def _owner(self) -> dict | None:
    try:
      owner = json.loads(self.path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
      return None
    return owner if isinstance(owner, dict) else None

  def _acquire(self) -> None:
    record = {**self._me(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    for _ in range(2):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        owner = self._owner()
        if owner is not None and not self._stale(owner):
          raise WorkdirLockedError(
              f"workdir {str(self.path.parent)!r} is in use by pid {owner['pid']} on host "
              f"{owner['host']!r} (since {owner.get('started', '?')}); wait for that run to end, "
              f"or delete {self.path} if it is gone"
          ) from None
        logging.warning("Taking over the stale lock %s (owner %s).", self.path, owner)
        self.path.unlink(missing_ok=True)
        continue
      with os.fdopen(fd, "w") as f:
        f.write(json.dumps(record) + "\n")
      return
    raise WorkdirLockedError(f"workdir lock {self.path} keeps reappearing; is another run starting")

  def _stale(self, owner: dict) -> bool:
    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
      return not _alive(owner["pid"])
    try:
      age = time.time() - self.path.stat().st_mtime
    except FileNotFoundError:
      return True
    return age > STALE_AFTER_S

  def _refresh(self) -> None:
    while not self._stop.wait(REFRESH_S):
      try:
        os.utime(self.path)
      except OSError:
        return
