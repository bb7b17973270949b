"""Where prepared data lives: data-dir resolution, writability checks and an inter-process lock."""

import contextlib
import fcntl
import os
from collections.abc import Iterator

import ml_collections

DATA_DIR_ENV = "EFFICIENCY_DATA_DIR"
DEFAULT_DATA_DIR = "~/.cache/efficiency/data"


def data_dir(config: ml_collections.ConfigDict) -> str:
  """`data.data_dir` if set, else $EFFICIENCY_DATA_DIR, else ~/.cache/efficiency/data."""
  path = config.data.data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
  return os.path.abspath(os.path.expanduser(path))


def ensure_writable(path: str) -> None:
  """Creates directory `path` if needed; raises PermissionError naming it if it is not writable."""
  hint = f"set data.data_dir or ${DATA_DIR_ENV} to a writable directory"
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise PermissionError(f"cannot create data directory {path!r} ({e.strerror}); {hint}") from e
  if not os.access(path, os.W_OK | os.X_OK):
    raise PermissionError(f"data directory {path!r} is not writable; {hint}")


@contextlib.contextmanager
def locked(directory: str) -> Iterator[None]:
  """Holds an exclusive lock on `directory`, so concurrent processes prepare data only once."""
  ensure_writable(directory)
  with open(os.path.join(directory, ".lock"), "w") as lock_file:
    fcntl.flock(lock_file, fcntl.LOCK_EX)
    yield
