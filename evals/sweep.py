"""Runs a sweep: one train.py process per point, in ROOT/<point-name>/, then a results table.

  python -m evals.sweep --sweep=configs/sweeps/NAME.py --workdir=ROOT [--parallel=N] [--dry_run]

The sweep file's format and the point names: efficiency/sweep.py.
"""

import sys

from absl import flags

from efficiency import cli
from efficiency.sweep import run_sweep

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep file, e.g. configs/sweeps/NAME.py.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep root: one subdirectory per point.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Points to run at once.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print one command per point and exit.")


def main(argv: list[str]) -> None:
  del argv
  if not _SWEEP.value or not _WORKDIR.value:
    sys.exit("error: --sweep=FILE and --workdir=ROOT are required")
  failed = run_sweep(_SWEEP.value, _WORKDIR.value, _PARALLEL.value, _DRY_RUN.value)
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  cli.run(main)
