"""Runs train.py and stops it after step N as a signal would (all processes at that step):

  python -m tests.train_until N --workdir=DIR [train.py flags ...]

For tests that resume a run on another mesh or process count at a known step.
"""

import runpy
import signal
import sys

from efficiency.train import interrupts

STOP_AT = int(sys.argv.pop(1))
_stops_after = interrupts.Interrupts.stops_after


def _stop_at(self, step: int) -> bool:
  if step == STOP_AT:
    self.signum = signal.SIGTERM
    return True
  return _stops_after(self, step)


interrupts.Interrupts.stops_after = _stop_at
sys.argv[0] = "train.py"
runpy.run_path("train.py", run_name="__main__")
