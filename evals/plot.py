"""Plots a sweep root: loss against tokens, and bar charts of the efficiency metrics.

  python -m evals.plot ROOT [--out=DIR]

Writes DIR/loss_vs_tokens.png and DIR/efficiency.png (DIR defaults to ROOT/plots).
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from absl import flags  # noqa: E402

from efficiency import cli  # noqa: E402
from efficiency.workdir.plots import plot_root  # noqa: E402

_OUT = flags.DEFINE_string("out", None, "Output directory; default ROOT/plots.")


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    sys.exit("usage: python -m evals.plot ROOT [--out=DIR]")
  if not Path(argv[1]).is_dir():
    sys.exit(f"error: ROOT={argv[1]!r} is not a directory (a sweep root or a workdir)")
  for path in plot_root(argv[1], _OUT.value):
    print(path)


if __name__ == "__main__":
  cli.run(main)
