"""One path for SIGINT (Ctrl-C) and SIGTERM (preemption) through every phase of a run.

Before the loop starts (start-up, data, restore, compile) nothing is written that a signal could
tear, so a signal stops the run at once. Once the loop runs, a signal only sets a flag that the
loop reads between steps: the step in flight, its evaluation and its save finish, the loop saves
the state it stopped at and waits until that checkpoint is committed, and the run ends as
`interrupted`. A signal during that final save changes nothing; `kill -9` abandons it (Orbax
commits a checkpoint by renaming it into place, so the previous one stays whole).
"""

import signal
import sys

from absl import logging

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
  """The run stopped on a signal; `step` is the newest committed checkpoint (None: none)."""

  def __init__(self, signum: int, step: int | None = None):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum
    self.step = step


class Interrupts:
  """Installs one handler for SIGINT and SIGTERM for the duration of a `with` block.

  `defer()` switches from stopping at once (raising `Interrupted`) to recording the signal in
  `signum` for the loop to act on.
  """

  def __init__(self):
    self.signum: int | None = None
    self.deferred = False
    self._previous: dict[int, object] = {}

  def __enter__(self) -> "Interrupts":
    for signum in SIGNALS:
      try:
        self._previous[signum] = signal.signal(signum, self._handle)
      except ValueError:  # signals can only be set from the main thread
        pass
    return self

  def __exit__(self, *exc) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}

  @property
  def requested(self) -> bool:
    return self.signum is not None

  def defer(self) -> None:
    """From now on a signal is a request the loop handles between steps."""
    self.deferred = True

  def _handle(self, signum: int, frame) -> None:
    del frame
    first = self.signum is None
    self.signum = signum
    if not self.deferred:
      raise Interrupted(signum)
    name = signal.Signals(signum).name
    if first:
      logging.warning("%s: stopping after the current step, once its checkpoint is saved.", name)
    else:
      print(
          f"{name}: already stopping; waiting for the checkpoint to be committed "
          "(kill -9 abandons it and keeps the previous one)", file=sys.stderr,
      )
