"""One path for SIGINT (Ctrl-C) and SIGTERM (preemption) through every phase of a run.

Before the loop starts (start-up, data, restore, compile) nothing is written that a signal could
tear, so a signal stops the run at once. Once the loop runs, a signal only sets a flag that the
loop reads between steps: the step in flight, its evaluation and its save finish, the loop saves
the state it stopped at and waits until that checkpoint is committed, and the run ends as
`interrupted`. A signal during that final save changes nothing; `kill -9` abandons it (Orbax
commits a checkpoint by renaming it into place, so the previous one stays whole).

In a multi-process job the processes must stop at the same step. There SIGTERM is left to JAX's
preemption notifier: any process that gets it tells the others through the coordination
service, and `multihost_utils.reached_preemption_sync_point` names the same step to every
process. SIGINT is turned into a SIGTERM of the process itself, so Ctrl-C stops a job the same way.
"""

import os
import signal
import sys

from absl import logging
from jax._src import distributed
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
  """The run stopped on a signal; `step` is the newest committed checkpoint (None: none)."""

  def __init__(self, signum: int, step: int | None = None):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum
    self.step = step


def _preemption_service() -> bool:
  """Whether this process is in a multi-process job with JAX's preemption sync manager."""
  return distributed.global_state.preemption_sync_manager is not None


class Interrupts:
  """Installs one handler for SIGINT and SIGTERM for the duration of a `with` block.

  `defer()` switches from stopping at once (raising `Interrupted`) to recording the signal in
  `signum` for the loop to act on; `stops_after(step)` is what the loop asks after each step.
  """

  def __init__(self):
    self.signum: int | None = None
    self.deferred = False
    self.coordinated = _preemption_service()
    self._previous: dict[int, object] = {}

  def __enter__(self) -> "Interrupts":
    handlers = {signal.SIGINT: self._handle, signal.SIGTERM: self._handle}
    if self.coordinated:  # SIGTERM stays with JAX's preemption notifier
      handlers = {signal.SIGINT: self._forward_as_sigterm}
    for signum, handler in handlers.items():
      try:
        self._previous[signum] = signal.signal(signum, handler)
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

  def stops_after(self, step: int) -> bool:
    """Whether the loop stops after `step` (and saves it). In a multi-process job every process
    must call this after every step; it answers the same for all of them."""
    if self.coordinated:
      if multihost_utils.reached_preemption_sync_point(step):
        self.signum = self.signum or signal.SIGTERM
        return True
      return False
    return self.requested

  def _forward_as_sigterm(self, signum: int, frame) -> None:
    del frame
    self.signum = signum
    logging.warning("SIGINT: stopping the job at a step all processes agree on.")
    os.kill(os.getpid(), signal.SIGTERM)

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
