"""Loads the models that decode together (one function, so every decoding CLI loads alike)."""

import flax.linen as nn
import ml_collections

from efficiency.config import ConfigError
from efficiency.quant import export
from efficiency.train.restore import load_trained


def load_model(
    workdir: str, quant_bits: int | None = None
) -> tuple[nn.Module, dict, ml_collections.ConfigDict]:
  """(model, params, config) of a workdir's newest checkpoint (ConfigError if it has none),
  converted to int8 or packed int4 weights when `quant_bits` is 8 or 4."""
  if quant_bits:
    trained = export.load_quantized(workdir, quant_bits)
  else:
    trained = load_trained(workdir)
  return trained.model, trained.params, trained.config


def check_same_tokenizer(configs: list[ml_collections.ConfigDict], names: list[str]) -> None:
  """Models decoding together must share a tokenizer: same kind, corpus and vocabulary."""
  keys = [(c.data.tokenizer, c.data.name, c.model.vocab_size) for c in configs]
  if len(set(keys)) > 1:
    described = ", ".join(
        f"{n}: tokenizer={k[0]} corpus={k[1]} vocab_size={k[2]}"
        for n, k in zip(names, keys, strict=True)
    )
    raise ConfigError(f"models have different vocabularies ({described})")
