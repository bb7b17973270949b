"""Corpora by `data.name`: each prepares its dataset once and returns random-access splits.

`stdlib`, `stdlib_tests` (its held-out test suite, for fine-tuning), `text`, `jsonl` and `parquet`
are built here through TFDS builders; a `data.mixture` combines several of them (`data.mixture`);
any other name is a TFDS dataset
(`lm1b`, `c4/en`, ...) read from `data.tfds_data_dir`, where it must be prepared as ArrayRecord.
"""

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import tensorflow_datasets as tfds

from data import mixture, record_corpus, storage, text_corpus
from data.stdlib_corpus import StdlibCorpus, default_root, make_config
from efficiency.errors import ConfigError, MissingPathError

Records = Sequence[Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class Source:
  """A prepared corpus: splits of records with a `text` field (bytes or str), read on demand."""

  train: Records
  validation: Records
  cache_dir: str  # For artifacts derived from this corpus, such as trained tokenizers.
  report: dict = dataclasses.field(default_factory=dict)  # what preparing it dropped, if anything


def _prepared(make: Callable[[], tfds.core.DatasetBuilder], data_dir: str) -> Source:
  """The splits of the builder `make` gives, prepared once under the data dir's lock.

  A builder reads its split metadata when it is constructed, so the one whose splits are read
  is made after the data exists: one made before another process's preparation finished (and
  found prepared a moment later) has no splits.
  """
  if not make().is_prepared():
    with storage.locked(data_dir):
      make().download_and_prepare()  # a no-op when another process prepared it meanwhile
  builder = make()
  splits = builder.as_data_source()
  return Source(train=splits["train"], validation=splits["validation"], cache_dir=builder.data_dir)


def _stdlib(config: ml_collections.ConfigDict, data_dir: str) -> Source:
  """The Python standard library (or `data.corpus_root`), prepared as ArrayRecord by TFDS."""
  root = config.data.corpus_root or default_root()
  if not os.path.isdir(root):
    raise MissingPathError(f"data.corpus_root={root!r} does not exist or is not a directory")
  builder_config = make_config(root, config.data.validation_percent)
  return _prepared(
      lambda: StdlibCorpus(config=builder_config, data_dir=data_dir, file_format="array_record"),
      data_dir,
  )


def _stdlib_tests(config: ml_collections.ConfigDict, data_dir: str) -> Source:
  """The standard library's test suite (`test/` under `data.corpus_root`): files the `stdlib`
  corpus skips, so a model pretrained on `stdlib` can be fine-tuned on unseen code."""
  tests = ml_collections.ConfigDict(config.to_dict())
  tests.data.corpus_root = os.path.join(config.data.corpus_root or default_root(), "test")
  return _stdlib(tests, data_dir)


def _text(config: ml_collections.ConfigDict, data_dir: str) -> Source:
  """The files `data.text_glob` names, built once into ArrayRecord by TFDS."""
  builder_config = text_corpus.make_config(config.data.text_glob, config.data.validation_percent)
  return _prepared(
      lambda: text_corpus.TextCorpus(
          config=builder_config, data_dir=data_dir, file_format="array_record"
      ),
      data_dir,
  )


def _tfds(config: ml_collections.ConfigDict, data_dir: str) -> Source:
  """A TFDS dataset by name, already prepared as ArrayRecord under `data.tfds_data_dir`."""
  name, tfds_dir = config.data.name, config.data.tfds_data_dir or None
  how = (
      f"prepare it with `tfds build {name} --data_dir={tfds_dir or '~/tensorflow_datasets'} "
      "--file_format=array_record` (on a machine with TensorFlow), then set data.tfds_data_dir"
  )
  if tfds_dir and not os.path.isdir(os.path.expanduser(tfds_dir)):
    raise MissingPathError(f"data.tfds_data_dir={tfds_dir!r} does not exist; {how}")
  try:
    splits = list(tfds.builder(name, data_dir=tfds_dir).info.splits.keys())
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ConfigError(
        f"data.name={name!r} is unknown; valid choices: {', '.join(sorted(SOURCES))} or a TFDS "
        f"dataset (lm1b, c4/en, ...) prepared in data.tfds_data_dir={tfds_dir or ''!r}; {how}"
    ) from e
  validation = "test" if "test" in splits and "validation" not in splits else "validation"
  try:
    read = lambda split: tfds.data_source(name, split=split, data_dir=tfds_dir, download=False)
    train, valid = read("train"), read(validation)
  except (NotImplementedError, AssertionError, FileNotFoundError) as e:
    raise MissingPathError(
        f"data.name={name!r} is not prepared as ArrayRecord in data.tfds_data_dir="
        f"{tfds_dir or ''!r}; {how}"
    ) from e
  key = hashlib.sha1(f"{name}\0{tfds_dir}".encode()).hexdigest()[:10]
  cache_dir = os.path.join(data_dir, "tfds", f"{name.replace('/', '_')}-{key}")
  return Source(train=train, validation=valid, cache_dir=cache_dir)


def _records(config: ml_collections.ConfigDict, data_dir: str) -> Source:
  """The JSONL or Parquet shards `data.files` names, built once into ArrayRecord by TFDS; the
  JSONL lines dropped as malformed are kept in `malformed.json` beside the build."""
  d = config.data
  builder_config = record_corpus.make_config(
      d.files, d.name, d.text_field, d.validation_percent
  )
  make = lambda: record_corpus.RecordCorpus(
      config=builder_config, data_dir=data_dir, file_format="array_record"
  )
  if not make().is_prepared():
    with storage.locked(data_dir):
      builder = make()
      if not builder.is_prepared():
        builder.download_and_prepare()
        malformed = dataclasses.asdict(builder.malformed)
        path = os.path.join(builder.data_dir, "malformed.json")
        with open(path + ".tmp", "w") as f:
          json.dump(malformed, f, indent=2)
        os.replace(path + ".tmp", path)
  source = _prepared(make, data_dir)
  path = os.path.join(source.cache_dir, "malformed.json")
  malformed = dataclasses.asdict(record_corpus.Malformed())
  if os.path.exists(path):
    with open(path) as f:
      malformed = json.load(f)
  return dataclasses.replace(source, report={"malformed_lines": malformed})


SOURCES: dict[str, Callable[[ml_collections.ConfigDict, str], Source]] = {
    "stdlib": _stdlib,
    "stdlib_tests": _stdlib_tests,
    "text": _text,
    "jsonl": _records,
    "parquet": _records,
}


def load_source(config: ml_collections.ConfigDict) -> Source:
  """The corpus named by `data.name` (a built-in one, else TFDS), prepared on first use; with a
  `data.mixture`, all its sources' records interleaved (what the tokenizer trains on)."""
  if mixture.is_mixture(config):
    parts = {}
    for label, sub in mixture.source_configs(config).items():
      try:
        parts[label] = load_source(sub)
      except ConfigError as e:
        raise type(e)(f"data.mixture.{label}: {e}") from None
    key = hashlib.sha1(
        json.dumps([[label, part.cache_dir] for label, part in parts.items()]).encode()
    ).hexdigest()[:10]
    return Source(
        train=mixture.Interleaved([part.train for part in parts.values()]),
        validation=mixture.Interleaved([part.validation for part in parts.values()]),
        cache_dir=os.path.join(storage.data_dir(config), "mixtures", key),
        report={label: part.report for label, part in parts.items()},
    )
  return SOURCES.get(config.data.name, _tfds)(config, storage.data_dir(config))


BAD_KINDS = ("empty", "invalid_utf8", "binary", "too_long")


def document_text(raw: bytes, max_bytes: int) -> tuple[str | None, str | None]:
  """(text, None) for a usable document; (None, kind) for a bad one, kind one of BAD_KINDS:
  longer than `max_bytes`, not UTF-8, binary (holds NUL bytes) or only whitespace."""
  if len(raw) > max_bytes:
    return None, "too_long"
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError:
    return None, "invalid_utf8"
  if "\x00" in text:
    return None, "binary"
  if not text.strip():
    return None, "empty"
  return text, None


def document_bytes(record: Mapping[str, Any]) -> bytes:
  """A record's text as bytes (TFDS gives bytes; its mocks give str)."""
  text = record["text"]
  return text.encode("utf-8") if isinstance(text, str) else bytes(text)
