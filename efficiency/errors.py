"""Errors a command line reports as one line: a value that cannot work, and why.

This module imports nothing, so any layer may raise them.
"""


class ConfigError(ValueError):
  """A value that cannot work; the message names the field, the value and the valid choices."""


class MissingPathError(ConfigError, FileNotFoundError):
  """A value names a file or directory that does not exist (or lacks what it must hold)."""


class StorageError(OSError):
  """A file the run must write cannot be written (disk full, read-only, no permission); the
  message names the path."""


class DivergedError(RuntimeError):
  """Training produced a non-finite loss or gradient norm; the message names the step."""


# What a command line prints as `error: MESSAGE` (no traceback): bad values, and directories a
# value names that cannot be created or written.
USER_ERRORS = (
    ConfigError, FileNotFoundError, NotADirectoryError, PermissionError, StorageError,
    DivergedError,
)
