"""Merging a PEFT run's adapters into plain parameters: a checkpoint that loads and decodes
without PEFT code (its params are exactly what the adapter model applies)."""

from pathlib import Path

import jax.numpy as jnp
import ml_collections

from efficiency.errors import ConfigError
from efficiency.train import checkpoint
from efficiency.train.setup import Training
from efficiency.workdir import files
from efficiency.workdir.restore import restore


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
  if (out / files.CHECKPOINTS).exists():
    raise ConfigError(f"--out={str(out)!r} already holds checkpoints; give a new directory")
  trained = restore(workdir, step)
  config = merged_config(trained.config)
  state = Training(config).init(config.seed, trained.params)
  state = state.replace(step=jnp.asarray(trained.step, jnp.int32))
  out.mkdir(parents=True, exist_ok=True)
  files.write_json_atomic(out / files.CONFIG, config.to_dict())
  checkpoint.save_state(out, trained.step, state)
  return out
