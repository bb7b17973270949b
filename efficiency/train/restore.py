"""Loads a trained model (config, module and parameters) from a workdir, for decoding and export."""

import dataclasses
import json
from pathlib import Path

import flax.linen as nn
import jax
import ml_collections
import orbax.checkpoint as ocp

from efficiency.config import ConfigError
from efficiency.model.transformer import Transformer
from efficiency.sharding.mesh import make_mesh
from efficiency.sharding.rules import LOGICAL_AXIS_RULES
from efficiency.train.setup import Training


@dataclasses.dataclass
class TrainedModel:
  """A workdir's config, its Transformer and the parameters saved at `step`."""

  config: ml_collections.ConfigDict
  model: nn.Module
  params: dict
  step: int
  workdir: Path


def load_config(workdir: str | Path) -> ml_collections.ConfigDict:
  """The config a run in `workdir` was trained with (WORKDIR/config.json)."""
  path = Path(workdir) / "config.json"
  if not path.exists():
    raise ConfigError(f"workdir={str(workdir)!r} has no config.json; is it a train.py workdir?")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def load_trained(workdir: str | Path, step: int | None = None) -> TrainedModel:
  """Restores the parameters of `workdir`'s newest (or given) checkpoint on a one-axis mesh.

  For a PEFT run they are the effective parameters: adapters merged into the frozen base.
  """
  workdir = Path(workdir)
  config = load_config(workdir)
  config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1, "expert": 1})
  directory = workdir.absolute() / "checkpoints"
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False)) \
      if directory.exists() else None
  steps = manager.all_steps() if manager else []
  if not steps:
    raise ConfigError(f"workdir={str(workdir)!r} has no checkpoint under {directory.name}/")
  step = max(steps) if step is None else step
  if step not in steps:
    raise ConfigError(f"step={step} is not saved in {str(workdir)!r}; saved steps: {sorted(steps)}")
  mesh = make_mesh(config.mesh)
  with mesh, nn.logical_axis_rules(LOGICAL_AXIS_RULES):
    training = Training(config, mesh)
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(training.abstract_state))
    )
    params = jax.device_get(training.effective_params(restored["state"]))
  manager.close()
  model = Transformer(ml_collections.FrozenConfigDict(config.model))
  return TrainedModel(config=config, model=model, params=params, step=step, workdir=workdir)


def load_params(workdir: str | Path) -> dict:
  """The newest parameters of a trained workdir (the base a fine-tuning run starts from)."""
  return load_trained(workdir).params
