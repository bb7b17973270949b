"""Loads the models that decode together (one function, so every decoding CLI loads alike)."""

from pathlib import Path

import ml_collections

from efficiency.errors import ConfigError
from efficiency.serving import export
from efficiency.workdir.restore import TrainedModel, restore


def load_model(workdir: str | Path, quant_bits: int | None = None) -> TrainedModel:
  """A workdir's newest checkpoint (ConfigError if it has none), converted to int8 or packed int4
  weights when `quant_bits` is 8 or 4."""
  return export.load_quantized(workdir, quant_bits) if quant_bits else restore(workdir)


def check_same_tokenizer(configs: list[ml_collections.ConfigDict], names: list[str]) -> None:
  """Models decoding together must share a tokenizer: same kind, corpus and vocabulary."""
  keys = [(c.data.tokenizer, c.data.name, c.model.vocab_size) for c in configs]
  if len(set(keys)) > 1:
    described = ", ".join(
        f"{n}: tokenizer={k[0]} corpus={k[1]} vocab_size={k[2]}"
        for n, k in zip(names, keys, strict=True)
    )
    raise ConfigError(f"models have different vocabularies ({described})")
