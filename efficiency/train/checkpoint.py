"""Orbax checkpoints holding the train state, the Grain iterator state and run progress together."""

from pathlib import Path

import grain
import jax
import numpy as np
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
