"""Orbax checkpoints holding the train state, the Grain iterator state and run progress together.

A checkpoint is committed when Orbax renames its temporary directory into place, so a crash
leaves the previous checkpoints whole. Restoring falls back from a checkpoint that does not
restore (torn, truncated, missing files) to the newest one that does, and moves the broken ones
aside to WORKDIR/checkpoints_corrupt/ so the run can save those steps again.
"""

import shutil
import time
from pathlib import Path

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from data.pipeline import ShardedIterator
from efficiency.train.state import TrainState
from efficiency.workdir import files


def make_manager(workdir: str | Path, keep: int) -> ocp.CheckpointManager:
  """An async CheckpointManager under WORKDIR/checkpoints keeping the newest `keep` steps."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=True,
      cleanup_tmp_directories=True,
  )
  return ocp.CheckpointManager(Path(workdir).absolute() / files.CHECKPOINTS, options=options)


def save(
    manager: ocp.CheckpointManager,
    state: TrainState,
    data_iterator: ShardedIterator,
    progress: dict,
    force: bool = False,
) -> bool:
  """Starts an async save of everything a resumed run needs, at `state.step` (False if that step
  is saved already)."""
  step = int(jax.device_get(state.step))
  if manager.latest_step() == step:
    return False
  return manager.save(
      step,
      args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=grain.checkpoint.CheckpointSave(data_iterator),
          progress=ocp.args.JsonSave(progress),
      ),
      force=force,
  )


CORRUPT = "checkpoints_corrupt"


def restore_latest(
    manager: ocp.CheckpointManager,
    abstract_state: TrainState,
    data_iterator: ShardedIterator,
) -> tuple[TrainState, dict] | None:
  """Restores the newest checkpoint that restores completely into the given shardings (any
  mesh) and iterator (any process count: its shards' positions are read from every process's
  file); None if there is none. Newer ones that fail are logged and moved aside; if every
  checkpoint fails, raises CorruptCheckpointError (nothing is moved)."""
  steps = sorted(manager.all_steps(), reverse=True)
  failures = []
  for step in steps:
    try:
      restored = manager.restore(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_state),
              progress=ocp.args.JsonRestore(),
          ),
      )
      data_iterator.restore_files(Path(manager.directory) / str(step) / "data")
    except Exception as e:  # noqa: BLE001  (any failure to read a step means: try an older one)
      reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
      logging.warning("Checkpoint of step %d does not restore (%s); trying an older one.",
                      step, reason[:300])
      failures.append((step, reason))
      continue
    if failures:
      _move_aside(manager, [s for s, _ in failures])
    return restored["state"], dict(restored["progress"])
  if failures:
    listed = "; ".join(f"step {s}: {r[:120]}" for s, r in failures)
    raise CorruptCheckpointError(
        f"no checkpoint in {manager.directory} restores ({listed}); move the checkpoints "
        "directory away to start over"
    )
  return None


class CorruptCheckpointError(OSError):
  """Every checkpoint of a workdir fails to restore."""


def _move_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
  """Moves the given steps' directories to WORKDIR/checkpoints_corrupt/STEP-TIME (process 0)."""
  directory = Path(manager.directory)
  if jax.process_index() == 0:
    aside = directory.parent / CORRUPT
    aside.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for step in steps:
      source = directory / str(step)
      if source.exists():
        target = aside / f"{step}-{stamp}"
        shutil.move(source, target)
        logging.warning("Moved the checkpoint of step %d that does not restore to %s.", step,
                        target)
  manager.reload()


def restore_weights(workdir: str | Path, step: int, abstract_state: TrainState) -> dict:
  """The weights saved at `step` in `workdir`, into the given shardings: `params` and, for a PEFT
  run, `frozen`. The optimizer state is not read (a partial restore), so loading a model for
  decoding or export takes half or less of a full state's memory and time."""
  item = {"params": abstract_state.params}
  if getattr(abstract_state, "frozen", None) is not None:
    item["frozen"] = abstract_state.frozen
  restore_args = jax.tree.map(lambda leaf: ocp.ArrayRestoreArgs(sharding=leaf.sharding), item)
  directory = Path(workdir).absolute() / files.CHECKPOINTS
  options = ocp.CheckpointManagerOptions(create=False)
  with ocp.CheckpointManager(directory, options=options) as manager:
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item, restore_args=restore_args, partial_restore=True)
        ),
    )
  return dict(restored["state"])


def save_state(directory: str | Path, step: int, state: TrainState) -> None:
  """Writes `state` alone as the checkpoint of `step` under `directory` (a new workdir's
  checkpoints/), waiting until it is on disk."""
  with ocp.CheckpointManager(Path(directory).absolute() / files.CHECKPOINTS) as manager:
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
    manager.wait_until_finished()


def save_weights(directory: str | Path, step: int, params: dict) -> None:
  """Writes `params` alone (no optimizer state, no data iterator) as the checkpoint of `step`
  under `directory` (a new workdir's checkpoints/): what an imported model needs, since every
  loader reads weights through `restore_weights`. Waits until it is on disk."""
  state = {"step": np.asarray(step, np.int32), "params": params}
  with ocp.CheckpointManager(Path(directory).absolute() / files.CHECKPOINTS) as manager:
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
    manager.wait_until_finished()


def committed_step(manager: ocp.CheckpointManager) -> int | None:
  """The newest step whose checkpoint is on disk and committed, after pending saves finish."""
  manager.wait_until_finished()
  manager.reload()
  return manager.latest_step()
