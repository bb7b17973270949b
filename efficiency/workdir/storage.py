"""Storage failures of a run (disk full, read-only, no permission, quota) as one line naming the
path, and the cleanup that leaves only committed checkpoints behind."""

import errno
import os
import shutil
from pathlib import Path

from efficiency.errors import StorageError
from efficiency.workdir import files

STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
# How libraries that wrap the OS error (tensorstore, through Orbax) word them.
STORAGE_MESSAGES = {
    "No space left on device": errno.ENOSPC,
    "Disk quota exceeded": errno.EDQUOT,
    "Read-only file system": errno.EROFS,
    "Permission denied": errno.EACCES,
}


def as_storage_error(error: BaseException, workdir: Path) -> StorageError | None:
  """The StorageError an exception (or one it was raised from) stands for; None if it is not a
  storage failure."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, StorageError):
      return error
    if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
      return _error(error.errno, error.filename or workdir)
    for message, number in STORAGE_MESSAGES.items():
      if message in str(error):
        return _error(number, workdir)
    error = error.__cause__ or error.__context__
  return None


def _error(number: int, path) -> StorageError:
  error = StorageError(
      f"cannot write {str(path)!r}: {os.strerror(number)}; the committed checkpoints are kept "
      "(free space or fix the permissions, then run again to resume)"
  )
  error.errno = number
  return error


def remove_partial_saves(workdir: Path) -> None:
  """Deletes the temporary directories of checkpoints that were never committed."""
  for tmp in (Path(workdir) / files.CHECKPOINTS).glob("*.orbax-checkpoint-tmp*"):
    shutil.rmtree(tmp, ignore_errors=True)
