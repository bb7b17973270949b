"""Packing: rows are exact, contiguous pieces of the documents, with consistent features."""

import json

import grain
import numpy as np
import pytest

from data import packing

BOS, EOS = 1, 2


def _pack_random_docs(rng: np.random.Generator, num_docs: int, seq_len: int):
  lengths = rng.choice([1, 2, 5, seq_len - 1, seq_len, seq_len + 1, 3 * seq_len + 7], num_docs)
  docs = [rng.integers(3, 50, n).astype(np.int32) for n in lengths]
  examples = [packing.document_example(d, bos_id=BOS, eos_id=EOS) for d in docs]
  rows = list(packing.pack(grain.MapDataset.source(examples).to_iter_dataset(), seq_len))
  return examples, rows


@pytest.mark.parametrize("seed", range(5))
def test_rows_are_contiguous_pieces_of_documents(seed):
  seq_len = 16
  examples, rows = _pack_random_docs(np.random.default_rng(seed), 30, seq_len)
  pieces = []  # (inputs, targets) of every segment, in order.
  for row in rows:
    assert set(row) == {"inputs", "targets", "segment_ids", "positions", "weights"}
    assert all(v.shape == (seq_len,) for v in row.values())
    assert row["weights"].dtype == np.float32
    assert all(row[k].dtype == np.int32 for k in ["inputs", "targets", "segment_ids", "positions"])
    segment_ids = row["segment_ids"]
    real = segment_ids > 0
    np.testing.assert_array_equal(row["weights"], real.astype(np.float32))
    np.testing.assert_array_equal(real, np.arange(seq_len) < real.sum())  # Padding at the end.
    assert not row["inputs"][~real].any() and not row["targets"][~real].any()
    assert not row["positions"][~real].any()
    ids = segment_ids[real]
    assert ids[0] == 1 and set(np.diff(ids)) <= {0, 1}  # Segments are numbered 1, 2, 3, ...
    for s in np.unique(ids):
      where = segment_ids == s
      np.testing.assert_array_equal(row["positions"][where], np.arange(where.sum()))
      inputs, targets = row["inputs"][where], row["targets"][where]
      np.testing.assert_array_equal(targets[:-1], inputs[1:])  # Targets are shifted inputs.
      pieces.append((inputs, targets))
  # Consecutive pieces concatenate back to exactly the documents, in order.
  for key, index in [("inputs", 0), ("targets", 1)]:
    np.testing.assert_array_equal(
        np.concatenate([p[index] for p in pieces]), np.concatenate([e[key] for e in examples])
    )
  # Every piece lies within one document: BOS only first, EOS only last.
  for inputs, targets in pieces:
    assert BOS not in inputs[1:] and EOS not in targets[:-1]


def test_only_the_last_row_is_padded():
  examples, rows = _pack_random_docs(np.random.default_rng(0), 50, 16)
  assert all(row["weights"].all() for row in rows[:-1])
  total = sum(len(e["inputs"]) for e in examples)
  assert sum(row["weights"].sum() for row in rows) == total
  assert len(rows) == -(-total // 16)


def test_state_restores_after_json_round_trip():
  seq_len = 16
  rng = np.random.default_rng(0)
  docs = [rng.integers(3, 50, n).astype(np.int32) for n in rng.choice([1, 15, 16, 17, 40], 20)]
  examples = [packing.document_example(d, bos_id=BOS, eos_id=EOS) for d in docs]
  dataset = packing.pack(grain.MapDataset.source(examples).to_iter_dataset(), seq_len)
  rows = list(dataset)
  iterator = iter(dataset)
  for k in range(len(rows)):
    restored = iter(dataset)
    restored.set_state(json.loads(json.dumps(iterator.get_state())))
    for expected in rows[k:]:
      np.testing.assert_array_equal(next(restored)["inputs"], expected["inputs"])
    next(iterator)
