"""The one loader of a trained model: a workdir's config, its Transformer and the parameters of
a saved step. Decoding, quantized export, adapter merging, reference scoring and the efficiency
benchmark all load through it."""

import dataclasses
from pathlib import Path

import flax.linen as nn
import jax
import ml_collections

from efficiency.errors import ConfigError, MissingPathError
from efficiency.model.transformer import make_model
from efficiency.train import checkpoint
from efficiency.train.distill import distill_config
from efficiency.train.setup import Training
from efficiency.workdir import files

ONE_AXIS_MESH = {"data": -1, "fsdp": 1, "tensor": 1, "expert": 1}


@dataclasses.dataclass
class TrainedModel:
  """A workdir's config, its Transformer and the parameters saved at `step`."""

  config: ml_collections.ConfigDict
  model: nn.Module
  params: dict
  step: int
  workdir: Path | None


def restore(
    workdir: str | Path,
    step: int | None = None,
    field: str = "workdir",
    hint: str = "is it a train.py workdir?",
) -> TrainedModel:
  """The parameters of `workdir`'s newest (or given) checkpoint, restored on a one-axis mesh over
  this process's devices. For a PEFT run they are the effective parameters: adapters merged into
  the frozen base. `field` and `hint` word the errors (the flag or config field that named the
  workdir, and what to do)."""
  workdir = Path(workdir)
  config = files.load_config(workdir, field, hint)
  config.mesh = ml_collections.ConfigDict(ONE_AXIS_MESH)
  steps = files.checkpoint_steps(workdir)
  if not steps:
    raise MissingPathError(
        f"{field}={str(workdir)!r} has no checkpoint under {files.CHECKPOINTS}/; {hint}"
    )
  step = steps[-1] if step is None else step
  if step not in steps:
    raise ConfigError(f"step={step} is not saved in {str(workdir)!r}; saved steps: {steps}")
  training = Training(config)
  weights = checkpoint.restore_weights(workdir, step, training.abstract_state)
  params = jax.device_get(training.method.combine(weights["params"], weights.get("frozen")))
  return TrainedModel(config, make_model(config), params, step, workdir)


def load_teacher(config: ml_collections.ConfigDict) -> tuple[nn.Module, dict] | None:
  """The (model, host parameters) of the run `config.distill.teacher` names, or None."""
  distill = distill_config(config)
  if distill is None:
    return None
  hint = "give a finished train.py workdir"
  trained = restore(distill.teacher, field="distill.teacher", hint=hint)
  return trained.model, trained.params
