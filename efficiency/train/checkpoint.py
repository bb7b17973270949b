"""Orbax checkpoints holding the train state, the Grain iterator state and run progress together."""

from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp

from efficiency.train.state import TrainState
from efficiency.workdir import files


def make_manager(workdir: str | Path, keep: int) -> ocp.CheckpointManager:
  """An async CheckpointManager under WORKDIR/checkpoints keeping the newest `keep` steps."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=True
  )
  return ocp.CheckpointManager(Path(workdir).absolute() / files.CHECKPOINTS, options=options)


def save(
    manager: ocp.CheckpointManager,
    state: TrainState,
    data_iterator: grain.DatasetIterator,
    progress: dict,
    force: bool = False,
) -> bool:
  """Starts an async save of everything a resumed run needs, at `state.step`."""
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


def restore_latest(
    manager: ocp.CheckpointManager,
    abstract_state: TrainState,
    data_iterator: grain.DatasetIterator,
) -> tuple[TrainState, dict] | None:
  """Restores the newest checkpoint into the given shardings and iterator; None if none exists."""
  step = manager.latest_step()
  if step is None:
    return None
  restored = manager.restore(
      step,
      args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          data=grain.checkpoint.CheckpointRestore(data_iterator),
          progress=ocp.args.JsonRestore(),
      ),
  )
  return restored["state"], dict(restored["progress"])


def restore_state(workdir: str | Path, step: int, abstract_state: TrainState) -> TrainState:
  """The train state saved at `step` in `workdir` (nothing else), into the given shardings."""
  directory = Path(workdir).absolute() / files.CHECKPOINTS
  options = ocp.CheckpointManagerOptions(create=False)
  with ocp.CheckpointManager(directory, options=options) as manager:
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
    )
  return restored["state"]


def save_state(directory: str | Path, step: int, state: TrainState) -> None:
  """Writes `state` alone as the checkpoint of `step` under `directory` (a new workdir's
  checkpoints/), waiting until it is on disk."""
  with ocp.CheckpointManager(Path(directory).absolute() / files.CHECKPOINTS) as manager:
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
    manager.wait_until_finished()
