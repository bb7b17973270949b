"""SIGINT and SIGTERM in every phase of a run: the run says which step is safe, summary.json says
`interrupted`, and the resumed run ends bit for bit as the uninterrupted one.

The signal is sent to this process from inside the phase (patched in), so the suite runs in
process and takes seconds. The default run sends each phase one of the two signals; `-m slow`
sends both to every phase.
"""

import json
import os
import signal

import pytest

from efficiency.train import checkpoint, loop
from efficiency.train.interrupts import Interrupted
from efficiency.train.loop import train_and_evaluate
from efficiency.train.setup import Training
from efficiency.workdir import files
from tests.helpers import assert_same_run

# phase -> (the step that must be committed when the run stops, whether the run still completes)
PHASES = {
    "startup": (None, False),
    "compile": (None, False),
    "step": (12, False),
    "eval": (20, False),
    "final_save": (40, True),
}
DEFAULT = [("startup", signal.SIGINT), ("compile", signal.SIGTERM), ("step", signal.SIGINT),
           ("eval", signal.SIGTERM), ("final_save", signal.SIGINT)]
CASES = [
    pytest.param(phase, signum, marks=() if (phase, signum) in DEFAULT else pytest.mark.slow,
                 id=f"{phase}-{signal.Signals(signum).name}")
    for phase in PHASES for signum in (signal.SIGINT, signal.SIGTERM)
]


def _send(signum: int) -> None:
  os.kill(os.getpid(), signum)


def _inject(monkeypatch, phase: str, signum: int) -> None:
  """Patches the run so that `signum` arrives during `phase`."""
  if phase == "startup":
    original = loop.load_inputs
    monkeypatch.setattr(loop, "load_inputs", lambda *a: (_send(signum), original(*a))[1])
  elif phase == "compile":
    original = Training.compile

    def compile_then_signal(self, example):
      result = original(self, example)
      _send(signum)  # arrives as compilation returns, before the first step
      return result

    monkeypatch.setattr(Training, "compile", compile_then_signal)
  elif phase == "step":
    original = loop.Loop.step

    def step(self, state, step, warm):
      if step == 12:
        _send(signum)  # mid-step: after the dispatch of step 12, before its bookkeeping
      return original(self, state, step, warm)

    monkeypatch.setattr(loop.Loop, "step", step)
  elif phase == "eval":
    original = loop.Loop.evaluate

    def evaluate(self, state, step):
      if step == 20:
        _send(signum)
      return original(self, state, step)

    monkeypatch.setattr(loop.Loop, "evaluate", evaluate)
  elif phase == "final_save":
    original = checkpoint.save

    def save(manager, state, *args, **kwargs):
      started = original(manager, state, *args, **kwargs)
      if int(state.step) == 40:
        _send(signum)  # while the async save of the last step is being finalized
      return started

    monkeypatch.setattr(checkpoint, "save", save)


@pytest.mark.parametrize("phase,signum", CASES)
def test_signal_in_every_phase_resumes_bitwise(
    phase, signum, monkeypatch, fault_config, reference_run, tmp_path
):
  workdir = tmp_path / "work"
  safe_step, completes = PHASES[phase]
  with monkeypatch.context() as patch:
    _inject(patch, phase, signum)
    if completes:
      train_and_evaluate(fault_config, workdir)
    else:
      with pytest.raises(Interrupted) as stopped:
        train_and_evaluate(fault_config, workdir)
      assert stopped.value.signum == signum and stopped.value.step == safe_step
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["status"] == ("completed" if completes else "interrupted")
  steps = files.checkpoint_steps(workdir)
  assert (steps[-1] if steps else None) == safe_step
  assert not list((workdir / "checkpoints").glob("*tmp*"))
  assert not (workdir / "lock").exists()
  if safe_step is not None and not completes:
    assert summary["checkpoint_step"] == safe_step == summary["steps"]

  train_and_evaluate(fault_config, workdir)
  assert_same_run(workdir, reference_run)
