"""Corpora by `data.name`: each prepares its dataset once and returns random-access splits."""

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections

from data import storage
from data.stdlib_corpus import StdlibCorpus, default_root, make_config

Records = Sequence[Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class Source:
  """A prepared corpus: splits of records with a UTF-8 `text` field (bytes), read on demand."""

  train: Records
  validation: Records
  cache_dir: str  # For artifacts derived from this corpus, such as trained tokenizers.


def _stdlib(config: ml_collections.ConfigDict, data_dir: str) -> Source:
  """The Python standard library (or `data.corpus_root`), prepared as ArrayRecord by TFDS."""
  root = config.data.corpus_root or default_root()
  if not os.path.isdir(root):
    raise FileNotFoundError(f"data.corpus_root={root!r} does not exist or is not a directory")
  builder_config = make_config(root, config.data.validation_percent)
  builder = StdlibCorpus(config=builder_config, data_dir=data_dir, file_format="array_record")
  if not builder.is_prepared():
    with storage.locked(data_dir):
      builder.download_and_prepare()
    # A fresh builder reads the split metadata the preparation wrote.
    builder = StdlibCorpus(config=builder_config, data_dir=data_dir, file_format="array_record")
  splits = builder.as_data_source()
  return Source(train=splits["train"], validation=splits["validation"], cache_dir=builder.data_dir)


SOURCES: dict[str, Callable[[ml_collections.ConfigDict, str], Source]] = {
    "stdlib": _stdlib,
}


def load_source(config: ml_collections.ConfigDict) -> Source:
  """The corpus named by `data.name`, prepared under the data dir on first use."""
  name = config.data.name
  if name not in SOURCES:
    raise ValueError(f"data.name={name!r} is unknown; valid choices: {', '.join(sorted(SOURCES))}")
  return SOURCES[name](config, storage.data_dir(config))
