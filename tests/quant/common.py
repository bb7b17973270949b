"""Tiny quantized models for the quant tests."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs.default import get_config
from efficiency.model.transformer import Transformer
from tests.conftest import random_packed_batch, tiny_model_config


def quant_model_config(**quant) -> ml_collections.FrozenConfigDict:
  """The tiny model config with `quant` overrides (the copy config.resolve makes)."""
  cfg = tiny_model_config(d_model=64, d_ff=128, num_layers=2)
  q = get_config().quant
  q.update(quant)
  cfg.quant = q
  return ml_collections.FrozenConfigDict(cfg)


def batch(seed: int = 0, size: int = 2, length: int = 16, vocab: int = 97):
  """(tokens, segment_ids, positions) of a random packed batch, as jnp arrays."""
  return tuple(jnp.asarray(a) for a in random_packed_batch(np.random.default_rng(seed), size,
                                                           length, vocab))


def init_params(cfg: ml_collections.FrozenConfigDict, seed: int = 0) -> dict:
  """Unboxed parameters of a Transformer with `cfg`."""
  tokens, segment_ids, positions = batch()
  boxed = Transformer(cfg).init(jax.random.PRNGKey(seed), tokens, segment_ids, positions)
  return jax.tree.map(
      lambda x: x.value if hasattr(x, "value") else x, boxed["params"],
      is_leaf=lambda x: hasattr(x, "value"),
  )
