"""TFDS builder over JSONL or Parquet shards (`data.name=jsonl|parquet`, `data.files=GLOB`): one
example per record, its `data.text_field` stored as `text` and its other scalar fields kept
(numbers as int64/float64, strings as text), with `path` and `index` (the record's line or row).

JSONL may be compressed (`.jsonl.gz`, `.jsonl.zst`). Parquet is read with pyarrow one row group
batch at a time, never a whole file. Each record is in train or validation by a stable hash of its
file (relative to the glob's folder) and index. A JSONL line that is not a JSON object is
dropped and counted with its file and line (`malformed`), never a crash.
"""

import dataclasses
import gzip
import hashlib
import io
import json
import math
import os
from collections.abc import Iterator
from typing import Any, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow_datasets as tfds
import zstandard
from tqdm import tqdm

from data.file_corpus import is_validation
from data.text_corpus import files_digest, pattern_root, text_files
from efficiency.errors import ConfigError, MissingPathError

EXTENSIONS = {"jsonl": (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json"), "parquet": (".parquet",)}
RESERVED = ("text", "path", "index")  # stored by the builder itself; same-named fields are dropped
SCHEMA_SAMPLE = 1000  # JSONL records whose fields decide the kept fields and their types
PARQUET_BATCH_ROWS = 1024
KINDS = {"int": (np.int64, 0), "float": (np.float64, math.nan), "str": (None, "")}


def record_files(pattern: str, fmt: str) -> list[str]:
  """The files `data.files` names, each of which must have one of `fmt`'s extensions."""
  paths = text_files(pattern)
  if not paths:
    raise MissingPathError(f"data.files={pattern!r} matches no files")
  for path in paths:
    if not path.endswith(EXTENSIONS[fmt]):
      raise ConfigError(
          f"data.files: {path!r} is not a {fmt} file; data.name={fmt!r} reads files ending in "
          f"{', '.join(EXTENSIONS[fmt])}"
      )
  return paths


def _open_text(path: str) -> TextIO:
  """A JSONL file as text lines, decompressed by its extension."""
  if path.endswith(".gz"):
    return gzip.open(path, "rt", encoding="utf-8", errors="replace")
  if path.endswith(".zst"):
    raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace")
  return open(path, encoding="utf-8", errors="replace")


@dataclasses.dataclass
class Malformed:
  """JSONL lines dropped because they are not a JSON object: how many, and the first few."""

  count: int = 0
  examples: list[dict] = dataclasses.field(default_factory=list)
  KEEP = 20

  def add(self, path: str, line: int, error: str) -> None:
    self.count += 1
    if len(self.examples) < self.KEEP:
      self.examples.append({"file": path, "line": line, "error": error[:120]})


def read_jsonl(path: str, malformed: Malformed | None = None) -> Iterator[tuple[int, dict]]:
  """(line number, record) for each JSON object line of `path`; other non-blank lines are
  dropped and counted in `malformed`. Raises ConfigError if no line of a non-empty file parses."""
  parsed = bad = 0
  try:
    with _open_text(path) as f:
      for number, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          record = json.loads(line)
          if not isinstance(record, dict):
            raise ValueError(f"a JSON {type(record).__name__}, not an object")
        except ValueError as e:
          bad += 1
          if malformed is not None:
            malformed.add(path, number, str(e))
          continue
        parsed += 1
        yield number, record
  except (OSError, EOFError, zstandard.ZstdError) as e:
    raise ConfigError(f"data.files: {path!r} is not a readable JSONL file ({e})") from e
  if bad and not parsed:
    raise ConfigError(f"data.files: {path!r} is not a JSONL file (no line is a JSON object)")


def _parquet(path: str) -> pq.ParquetFile:
  try:
    return pq.ParquetFile(path)
  except (pa.ArrowInvalid, OSError) as e:
    raise ConfigError(f"data.files: {path!r} is not a Parquet file ({e})") from e


def read_parquet(path: str, columns: list[str]) -> Iterator[tuple[int, dict]]:
  """(row number, record) for each row of `path`, reading `columns` in batches of row groups."""
  row = 0
  for batch in _parquet(path).iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
    for record in batch.to_pylist():
      yield row, record
      row += 1


def _kind(value: Any) -> str | None:
  """The stored kind of a scalar field value; None for what is not kept (lists, dicts, None)."""
  if isinstance(value, bool | int | np.integer):
    return "int"
  if isinstance(value, float | np.floating):
    return "float"
  if isinstance(value, str):
    return "str"
  return None


def _arrow_kind(dtype: pa.DataType) -> str | None:
  if pa.types.is_integer(dtype) or pa.types.is_boolean(dtype):
    return "int"
  if pa.types.is_floating(dtype):
    return "float"
  if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
    return "str"
  return None


def check_text(record: dict, text_field: str, path: str, index: int) -> str:
  """The record's text; ConfigError naming the field and the record if it is missing or not a
  string."""
  if text_field not in record:
    raise ConfigError(
        f"data.text_field={text_field!r} is missing from the record at {path}:{index}; its "
        f"fields: {', '.join(sorted(record)) or 'none'}"
    )
  text = record[text_field]
  if not isinstance(text, str):
    raise ConfigError(
        f"data.text_field={text_field!r} of the record at {path}:{index} is of type "
        f"{type(text).__name__}, not a string"
    )
  return text


def infer_fields(paths: list[str], fmt: str, text_field: str) -> tuple[tuple[str, str], ...]:
  """((name, kind), ...): the scalar fields kept besides the text, from the first file's schema
  (Parquet) or its first records (JSONL; a field that is ever a float is a float)."""
  kinds: dict[str, str] = {}
  if fmt == "parquet":
    schema = _parquet(paths[0]).schema_arrow
    if text_field not in schema.names:
      raise ConfigError(
          f"data.text_field={text_field!r} is not a column of {paths[0]!r}; its columns: "
          f"{', '.join(schema.names)}"
      )
    if _arrow_kind(schema.field(text_field).type) != "str":
      raise ConfigError(
          f"data.text_field={text_field!r} of {paths[0]!r} is of type "
          f"{schema.field(text_field).type}, not a string"
      )
    kinds = {f.name: _arrow_kind(f.type) for f in schema if _arrow_kind(f.type)}
  else:
    for n, (index, record) in enumerate(read_jsonl(paths[0])):
      if n >= SCHEMA_SAMPLE:
        break
      check_text(record, text_field, paths[0], index)
      for name, value in record.items():
        kind = _kind(value)
        if kind is None or kinds.get(name) in ("str", "float"):
          continue
        kinds[name] = "float" if kinds.get(name) == "int" and kind == "float" else kind
  return tuple(sorted((k, v) for k, v in kinds.items() if k != text_field and k not in RESERVED))


def _convert(value: Any, kind: str) -> Any:
  """A field's value as its stored kind; the kind's default where it is missing or does not fit."""
  dtype, default = KINDS[kind]
  if kind == "str":
    return value if isinstance(value, str) else default
  if _kind(value) not in ("int", "float"):
    return default
  if kind == "int" and not float(value).is_integer():  # a fraction, NaN or infinity
    return default
  return dtype(value)


@dataclasses.dataclass
class RecordCorpusConfig(tfds.core.BuilderConfig):
  """Which shards to read, their format, the text field, the kept fields and the held-out share."""

  pattern: str = ""
  fmt: str = "jsonl"
  text_field: str = "text"
  fields: tuple[tuple[str, str], ...] = ()
  validation_percent: int = 5


def make_config(
    pattern: str, fmt: str, text_field: str, validation_percent: int
) -> RecordCorpusConfig:
  """A config named after a hash of the files (paths, sizes, mtimes), the format, the text field
  and the kept fields: new data, new build."""
  paths = record_files(pattern, fmt)
  fields = infer_fields(paths, fmt, text_field)
  digest = files_digest(paths, hashlib.sha1(json.dumps([fmt, text_field, fields]).encode()))
  return RecordCorpusConfig(
      name=f"{fmt}-{digest.hexdigest()[:10]}-val{validation_percent}",
      description=f"{len(paths)} {fmt} files matching {pattern}, {validation_percent}% held out.",
      pattern=pattern,
      fmt=fmt,
      text_field=text_field,
      fields=fields,
      validation_percent=validation_percent,
  )


class RecordCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Records of JSONL or Parquet shards: `text`, `path`, `index` and the kept scalar fields.
  `malformed` counts the JSONL lines dropped while generating the train split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.malformed = Malformed()

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> None:
    """None: there is no checksums file next to this code (see `FileCorpus.code_path`)."""
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    features = {"text": tfds.features.Text(), "path": tfds.features.Text(), "index": np.int64}
    for name, kind in self.builder_config.fields:
      features[name] = tfds.features.Text() if kind == "str" else KINDS[kind][0]
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__, features=tfds.features.FeaturesDict(features)
    )

  def _generate_examples(self, split: str) -> Iterator[tuple[str, dict]]:
    cfg = self.builder_config
    root = pattern_root(cfg.pattern)
    columns = [cfg.text_field, *(name for name, _ in cfg.fields)]
    malformed = self.malformed if split == "train" else None
    paths = record_files(cfg.pattern, cfg.fmt)
    for path in tqdm(paths, desc=f"Reading {cfg.fmt} {split}", unit="file"):
      key = os.path.relpath(path, root).replace(os.sep, "/")
      if cfg.fmt == "parquet":
        present = set(_parquet(path).schema_arrow.names)
        if cfg.text_field not in present:
          raise ConfigError(f"data.text_field={cfg.text_field!r} is not a column of {path!r}")
        records = read_parquet(path, [c for c in columns if c in present])
      else:
        records = read_jsonl(path, malformed)
      for index, record in records:
        is_valid = is_validation(f"{key}:{index}", cfg.validation_percent)
        if is_valid != (split == "validation"):
          continue
        example = {"text": check_text(record, cfg.text_field, path, index), "path": path,
                   "index": index}
        for name, kind in cfg.fields:
          example[name] = _convert(record.get(name), kind)
        yield f"{key}:{index}", example

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split) for split in ("train", "validation")}
