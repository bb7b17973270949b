"""What a decoding CLI loads from a run: its models (one function, so every CLI loads alike),
checked to share a tokenizer, and prompts cut from its validation documents."""

import hashlib
from pathlib import Path

import ml_collections
import numpy as np

from data.prepared import Subset
from data.sources import document_bytes, load_source
from data.tokenizer import HFTokenizer, Tokenizer
from efficiency.errors import ConfigError
from efficiency.quant import table
from efficiency.serving import export
from efficiency.train.inputs import prepared_of, tokenizer_config
from efficiency.workdir.restore import TrainedModel, restore

# The decoding CLIs' --quant: weight bits, and `4a8` for int4 weights on int8 activations (W4A8).
QUANT_CHOICES = ("none", "8", "4", "4a8")


def quant_setting(value: str) -> tuple[int | None, str]:
  """(weight bits or None, int4 activations) of a --quant value in QUANT_CHOICES."""
  if value not in QUANT_CHOICES:
    raise ConfigError(f"quant={value!r} is invalid; valid choices: {list(QUANT_CHOICES)}")
  if value == "none":
    return None, "float"
  return int(value[0]), "int8" if value == "4a8" else "float"


def load_model(
    workdir: str | Path, quant_bits: int | None = None, embedding: str = "none",
    int4_activations: str = "float",
) -> TrainedModel:
  """A workdir's newest checkpoint (ConfigError if it has none), converted to int8 or packed int4
  weights when `quant_bits` is 8 or 4, its embedding table stored per `embedding`, int4 on
  `int4_activations`."""
  check_embedding(quant_bits, embedding)
  if quant_bits:
    return export.load_quantized(workdir, quant_bits, embedding=embedding,
                                 int4_activations=int4_activations)
  return restore(workdir)


def check_embedding(quant_bits: int | None, embedding: str) -> None:
  """A quantized table (`--quant_embedding`) comes only with quantized weights (`--quant`)."""
  table.check_mode("quant_embedding", embedding)
  if embedding != "none" and not quant_bits:
    raise ConfigError(
        f"quant_embedding={embedding!r} is unsupported with quant=none; use --quant=8 or 4"
    )


def _vocabulary(config: ml_collections.ConfigDict) -> tuple:
  """What decides a model's token ids: the tokenizer it trained with (followed through
  `data.tokenizer_from`; an `hf` one by its tokenizer.json's contents) and its vocabulary size."""
  source = tokenizer_config(config)
  if source.data.tokenizer == "hf":
    path = Path(source.data.tokenizer_dir) / HFTokenizer.FILE
    origin = hashlib.sha1(path.read_bytes()).hexdigest()[:12] if path.is_file() else str(path)
    return ("hf", origin, config.model.vocab_size)
  return (source.data.tokenizer, source.data.name, config.model.vocab_size)


def check_same_tokenizer(configs: list[ml_collections.ConfigDict], names: list[str]) -> None:
  """Models decoding together must share a tokenizer: same kind, corpus and vocabulary."""
  keys = [_vocabulary(c) for c in configs]
  if len(set(keys)) > 1:
    described = ", ".join(
        f"{n}: tokenizer={k[0]} corpus={k[1]} vocab_size={k[2]}"
        for n, k in zip(names, keys, strict=True)
    )
    raise ConfigError(f"models have different vocabularies ({described})")


def validation_prompts(
    config: ml_collections.ConfigDict, tokenizer: Tokenizer, count: int, length: int
) -> list[np.ndarray]:
  """The first `length` tokens of the first `count` validation documents that are that long."""
  records = Subset(load_source(config).validation, prepared_of(config, tokenizer).validation_M)
  prompts = []
  for i in range(len(records)):
    ids = tokenizer.encode(document_bytes(records[i]).decode("utf-8", errors="replace"))
    if len(ids) >= length:
      prompts.append(np.asarray(ids[:length], np.int32))
    if len(prompts) == count:
      break
  if not prompts:
    raise ConfigError(f"no validation document has prompt_tokens={length} tokens")
  return prompts
