"""Prompts cut from a run's validation documents, for decoding benchmarks."""

import ml_collections
import numpy as np

from data.prepared import Subset
from data.sources import document_bytes, load_source
from data.tokenizer import Tokenizer
from efficiency.errors import ConfigError
from efficiency.train.inputs import prepared_of


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
