"""Runs many command lines cheaply: this process imports the heavy libraries once (without
starting a jax backend), then runs each command in a forked child.

  python tests/faults/cli_driver.py < cases.json > results.json

Input: a JSON list of argv lists, each `["train.py", ...]` or `["-m", "evals.generate", ...]`.
Output: a JSON list of {"code": exit status, "stdout": ..., "stderr": ...}, one per argv.
"""

import json
import os
import runpy
import signal
import sys
import tempfile
import traceback
from pathlib import Path

TIMEOUT_S = 120
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

# Imported once here, so each child starts with them loaded.
import flax.linen  # noqa: E402, F401
import grain  # noqa: E402, F401
import jax  # noqa: E402, F401
import optax  # noqa: E402, F401
import orbax.checkpoint  # noqa: E402, F401
import tensorflow_datasets  # noqa: E402, F401

import efficiency.config  # noqa: E402, F401
import efficiency.train.loop  # noqa: E402, F401


def _child(argv: list[str]) -> int:
  """Runs one command line as `python ARGV` would; returns its exit status."""
  signal.alarm(TIMEOUT_S)
  try:
    if argv[0] == "-m":
      sys.argv = [argv[1], *argv[2:]]
      runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
      sys.argv = list(argv)
      runpy.run_path(argv[0], run_name="__main__")
  except SystemExit as e:
    if e.code is None or isinstance(e.code, int):
      return e.code or 0
    print(e.code, file=sys.stderr)
    return 1
  except BaseException:  # noqa: BLE001  (reported as the traceback a user would see)
    traceback.print_exc()
    return 1
  return 0


def run(argv: list[str]) -> dict:
  with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
    pid = os.fork()
    if pid == 0:
      os.dup2(out.fileno(), 1)
      os.dup2(err.fileno(), 2)
      code = _child(argv)
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(code)
    _, status = os.waitpid(pid, 0)
    out.seek(0)
    err.seek(0)
    return {
        "code": os.waitstatus_to_exitcode(status),
        "stdout": out.read().decode(errors="replace"),
        "stderr": err.read().decode(errors="replace"),
    }


if __name__ == "__main__":
  print(json.dumps([run(argv) for argv in json.load(sys.stdin)]))
