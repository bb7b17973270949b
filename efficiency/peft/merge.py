"""Merging a PEFT run's adapters into plain parameters: a checkpoint that loads and decodes
without PEFT code (its params are exactly what the adapter model applies)."""

from pathlib import Path

import flax.linen as nn
import jax
import ml_collections
import orbax.checkpoint as ocp

from efficiency.config import ConfigError
from efficiency.metrics.writer import write_json_atomic
from efficiency.sharding.mesh import make_mesh
from efficiency.sharding.rules import LOGICAL_AXIS_RULES
from efficiency.train.restore import load_trained
from efficiency.train.setup import Training


def merged_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` as a plain (non-PEFT) run's: no peft section, no init_from."""
  plain = ml_collections.ConfigDict(config.to_dict())
  for field in ("peft", "init_from"):
    if field in plain:
      del plain[field]
  return plain


def merge(workdir: str | Path, out: str | Path, step: int | None = None) -> Path:
  """Writes `workdir`'s merged parameters as a plain checkpoint in `out`; returns `out`."""
  out = Path(out).absolute()
  if (out / "checkpoints").exists():
    raise ConfigError(f"--out={str(out)!r} already holds checkpoints; give a new directory")
  trained = load_trained(workdir, step)
  config = merged_config(trained.config)
  mesh = make_mesh(config.mesh)
  with mesh, nn.logical_axis_rules(LOGICAL_AXIS_RULES):
    training = Training(config, mesh)
    state = training.init(config.seed, trained.params)
    state = state.replace(step=jax.numpy.asarray(trained.step, jax.numpy.int32))
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "config.json", config.to_dict())
    manager = ocp.CheckpointManager(out / "checkpoints")
    manager.save(trained.step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
    manager.wait_until_finished()
    manager.close()
  return out
