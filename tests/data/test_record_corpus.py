"""JSONL and Parquet sources: the same records as plain text files, scalar fields kept, Parquet
read in row-group batches, malformed JSONL lines dropped and reported, the metadata filter."""

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from data import prepared, record_corpus, sources
from data import tokenizer as tokenizer_lib
from tests.helpers import data_config

N = 120


def _records() -> list[dict]:
  rng = np.random.default_rng(0)
  words = ["tensor", "shard", "row", "token", "mixture", "caf\u00e9", "\u03bb", "grain"]
  return [
      {"text": f"doc {i}: " + " ".join(rng.choice(words, size=int(rng.integers(3, 30)))),
       "int_score": int(i % 6), "score": float(i) / 8, "language": "en" if i % 3 else "fr",
       "tags": ["nested", "dropped"]}
      for i in range(N)
  ]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
  """The same records as text files, JSONL (plain, gzip, zstd; one malformed line and a blank
  one) and Parquet (row groups of 16)."""
  root = tmp_path_factory.mktemp("shards")
  records = _records()
  (root / "text").mkdir()
  for i, r in enumerate(records):
    (root / "text" / f"{i}.txt").write_text(r["text"])
  (root / "jsonl").mkdir()
  lines = [json.dumps(r) for r in records]
  (root / "jsonl" / "a.jsonl").write_text("\n".join(lines[:40] + ["{oops", ""] + lines[40:60]))
  with gzip.open(root / "jsonl" / "b.jsonl.gz", "wt") as f:
    f.write("\n".join(lines[60:90]) + "\n")
  (root / "jsonl" / "c.jsonl.zst").write_bytes(
      zstandard.ZstdCompressor().compress(("\n".join(lines[90:]) + "\n").encode())
  )
  (root / "parquet").mkdir()
  table = pa.Table.from_pylist(records)
  pq.write_table(table.slice(0, 70), root / "parquet" / "a.parquet", row_group_size=16)
  pq.write_table(table.slice(70), root / "parquet" / "b.parquet", row_group_size=16)
  return root


def _config(shards: Path, data_dir: Path, name: str, **data):
  files = {"text": {"text_glob": str(shards / "text")}, "jsonl": {"files": str(shards / "jsonl")},
           "parquet": {"files": str(shards / "parquet" / "*.parquet")}}[name]
  return data_config("", str(data_dir), name=name, tokenizer="bytes", **files, **data)


def _all(source: sources.Source) -> list[dict]:
  return [source.train[i] for i in range(len(source.train))] + [
      source.validation[i] for i in range(len(source.validation))
  ]


def test_jsonl_and_parquet_hold_the_records_of_plain_files(shards, tmp_path):
  texts = sorted(r["text"] for r in _records())
  plain = _all(sources.load_source(_config(shards, tmp_path, "text")))
  assert sorted(r["text"].decode() for r in plain) == texts
  by_text = {r["text"]: r for r in _records()}
  for name in ("jsonl", "parquet"):
    source = sources.load_source(_config(shards, tmp_path, name))
    records = _all(source)
    assert sorted(r["text"].decode() for r in records) == texts, name
    assert 0 < len(source.validation) < len(records) // 2  # validation_percent=20
    for r in records:
      want = by_text[r["text"].decode()]
      assert r["int_score"] == want["int_score"] and r["language"].decode() == want["language"]
      np.testing.assert_allclose(r["score"], want["score"], rtol=1e-6)  # stored as float32
      assert "tags" not in r  # lists are not scalar fields
  malformed = sources.load_source(_config(shards, tmp_path, "jsonl")).report["malformed_lines"]
  assert malformed["count"] == 1
  assert malformed["examples"][0]["file"].endswith("a.jsonl")
  assert malformed["examples"][0]["line"] == 41


def test_parquet_is_read_in_batches_never_whole(shards, monkeypatch):
  whole = lambda *a, **k: pytest.fail("a whole Parquet file was read")
  monkeypatch.setattr(pq, "read_table", whole)
  monkeypatch.setattr(pq.ParquetFile, "read", whole)
  sizes = []
  real = pq.ParquetFile.iter_batches

  def iter_batches(self, *args, **kwargs):
    for batch in real(self, *args, **kwargs):
      sizes.append(batch.num_rows)
      yield batch

  monkeypatch.setattr(pq.ParquetFile, "iter_batches", iter_batches)
  monkeypatch.setattr(record_corpus, "PARQUET_BATCH_ROWS", 16)
  rows = list(record_corpus.read_parquet(str(shards / "parquet" / "a.parquet"), ["text"]))
  assert len(rows) == 70 and max(sizes) == 16


def test_metadata_filter_counts_and_report(shards, tmp_path):
  config = _config(shards, tmp_path, "parquet", filters="metadata")
  config.data.filter.update(field="int_score", field_min=3.0)
  tokenizer = tokenizer_lib.get_tokenizer(config)
  result = prepared.prepare(config, tokenizer)
  train = sources.load_source(config).train
  scores = np.array([train[i]["int_score"] for i in range(len(train))])
  (stats,) = result.report["filters"]
  assert stats["name"] == "metadata"
  assert stats["kept_documents"] == (scores >= 3).sum() == len(result.train_N)
  assert stats["dropped_documents"] == (scores < 3).sum()
  assert all(train[int(i)]["int_score"] >= 3 for i in result.train_N)
  assert result.report["malformed_lines"]["count"] == 0
