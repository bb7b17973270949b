"""What the command lines share: one-line errors for a bad `--config` file or an unknown
`--config.FIELD`, for bad flag values, and for the bad values a library call raises.

This module imports no jax, so a command line can check its flags before it starts devices.
"""

import contextlib
import os
import runpy
import sys
from collections.abc import Callable, Iterator

from absl import app, flags

from efficiency.errors import USER_ERRORS


def config_flag_error(argv: list[str], default: str = "configs/default.py") -> str | None:
  """A missing `--config=FILE[:ARG]`, or a `--config.FIELD=...` naming a field the config lacks,
  as one line (None if neither). ml_collections would fail on them with a traceback while
  defining the flag, so call this before defining it."""
  value = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
  path, _, arg = (value or default).partition(":")
  if not os.path.isfile(path):
    return f"error: --config={path}: no such config file"
  try:
    config = runpy.run_path(path)["get_config"](arg or None)
  except Exception:  # noqa: BLE001  (the flag parser reports problems with the file itself)
    return None
  for flag in argv:
    if not flag.startswith("--config."):
      continue
    field = flag[len("--config.") :].split("=", 1)[0]
    node = config
    parts = field.split(".")
    for depth, part in enumerate(parts):
      if not hasattr(node, "keys") or part not in node:
        parent = ".".join(parts[:depth]) or "config"
        valid = sorted(node.keys()) if hasattr(node, "keys") else []
        return f"error: --config.{field}: {parent} has no field {part!r}; valid fields: {valid}"
      node = node[part]
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing (pass as `app.run(main, flags_parser=parse_flags)`), with flag errors as
  one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    lines = [line for line in str(e).splitlines() if line.strip()]
    if len(lines) > 1:  # a config file that raised: its flag, then the exception's own message
      flag = lines[0].split(": Error whilst")[0]
      sys.exit(f"error: {flag}: {lines[-1].split(': ', 1)[-1]}")
    sys.exit(f"error: {lines[0] if lines else e}")


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
  """Exits with `error: MESSAGE` (status 1, no traceback) on a bad value or a missing path."""
  try:
    yield
  except USER_ERRORS as e:
    sys.exit(f"error: {e}")


def run(main: Callable[[list[str]], None]) -> None:
  """`app.run(main)` with bad flags and bad values (USER_ERRORS) reported as one line."""

  def guarded(argv: list[str]) -> None:
    with one_line_errors():
      main(argv)

  app.run(guarded, flags_parser=parse_flags)
