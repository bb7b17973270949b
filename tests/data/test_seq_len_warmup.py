"""Sequence-length warmup: the piece schedule, the cuts, and that the bucketed (short-row) and
masked (full-row) layouts carry exactly the same tokens."""

import numpy as np
import pytest

from data import pipeline
from data import tokenizer as tokenizer_lib
from data.seq_len_warmup import (
  bucket_lengths,
  max_segment_len,
  piece_len,
  split_segments,
  to_rows,
  warmup_batch,
)
from tests.helpers import data_config

FEATURES = ("inputs", "targets", "weights", "positions")


def _iterator(config):
  tokenizer = tokenizer_lib.get_tokenizer(config)
  return pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1)


def _packed_rows(rng: np.random.Generator, rows: int, length: int) -> dict[str, np.ndarray]:
  """Rows packed as `data.packing` packs them: documents of random lengths back to back, each
  segment's positions from 0 (a document continued from the row before included), a padded tail
  in some rows."""
  batch = {k: np.zeros((rows, length), np.int32) for k in ("inputs", "targets", "segment_ids")}
  batch["positions"] = np.zeros((rows, length), np.int32)
  for r in range(rows):
    end = length - int(rng.integers(0, 5)) if r % 3 == 0 else length
    offset, segment = 0, 1
    while offset < end:
      n = min(int(rng.integers(1, 2 * length // 3)), end - offset)
      batch["segment_ids"][r, offset : offset + n] = segment
      batch["positions"][r, offset : offset + n] = np.arange(n)
      offset, segment = offset + n, segment + 1
  real = batch["segment_ids"] > 0
  batch["inputs"] = np.where(real, rng.integers(1, 500, (rows, length)), 0).astype(np.int32)
  batch["targets"] = np.where(real, rng.integers(1, 500, (rows, length)), 0).astype(np.int32)
  batch["weights"] = real.astype(np.float32)
  return batch


def _pieces(segment_ids_T: np.ndarray) -> list[tuple[int, int]]:
  """(start, end) of each maximal run of one non-zero segment id."""
  runs, start = [], 0
  for t in range(1, len(segment_ids_T) + 1):
    if t == len(segment_ids_T) or segment_ids_T[t] != segment_ids_T[start]:
      if segment_ids_T[start]:
        runs.append((start, t))
      start = t
  return runs


def _same_segment(segment_ids_T: np.ndarray) -> np.ndarray:
  """Which token pairs of a row attention may connect (same segment, not padding)."""
  real = segment_ids_T > 0
  return (segment_ids_T[:, None] == segment_ids_T[None, :]) & real[:, None] & real[None, :]


@pytest.mark.parametrize(
    "seq_len,start,expected",
    [(128, 16, (128, 64, 32, 16)), (128, 20, (128, 64, 32, 16)), (96, 10, (96, 48, 24, 12, 6)),
     (32, 32, (32,)), (100, 16, ())],
)
def test_buckets_halve_seq_len_down_to_start(seq_len, start, expected):
  assert bucket_lengths(seq_len, start) == expected


@pytest.mark.parametrize("seq_len,start,steps", [(128, 16, 60), (96, 10, 7), (64, 64, 3)])
def test_piece_length_is_the_largest_bucket_within_the_warmup_length(seq_len, start, steps):
  config = data_config("", "")
  config.seq_len = seq_len
  config.data.seq_len_warmup.update(start=start, steps=steps)
  lengths = bucket_lengths(seq_len, start)
  pieces = [piece_len(step, config) for step in range(steps + 3)]
  for step, piece in enumerate(pieces):
    longest = max_segment_len(step, config)
    assert piece in lengths and piece <= longest
    assert all(b > longest for b in lengths if b > piece)  # no larger bucket fits
  assert pieces == sorted(pieces) and pieces[steps:] == [seq_len] * 3
  assert pieces[0] == max(b for b in lengths if b <= start)


def test_split_segments_cuts_at_multiples_of_the_piece_and_at_segment_starts():
  batch = {
      "segment_ids": np.array([[1, 1, 1, 1, 1, 2, 2, 0]], np.int32),
      "positions": np.array([[0, 1, 2, 3, 4, 0, 1, 0]], np.int32),
  }
  out = split_segments(batch, 4)
  assert out["segment_ids"].tolist() == [[1, 1, 1, 1, 2, 3, 3, 0]]
  assert out["positions"].tolist() == [[0, 1, 2, 3, 0, 0, 1, 0]]
  rows = to_rows(out, 4)
  assert rows["segment_ids"].tolist() == [[1, 1, 1, 1], [1, 2, 2, 0]]
  assert rows["positions"].tolist() == [[0, 1, 2, 3], [0, 0, 1, 0]]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("length,piece", [(32, 8), (32, 16), (48, 12), (64, 4)])
def test_bucketed_rows_carry_exactly_the_masked_pieces(seed, length, piece):
  """Property: on packed multi-document rows, the masked cut keeps every token, target and
  weight, and no piece crosses a multiple of `piece` or a document boundary; the bucketed rows
  are the masked rows reshaped, with the same pieces (segment ids renumbered per short row)."""
  rng = np.random.default_rng(seed)
  batch = _packed_rows(rng, 6, length)
  masked = warmup_batch(batch, piece, buckets=False)
  bucketed = warmup_batch(batch, piece, buckets=True)
  for key in ("inputs", "targets", "weights"):
    np.testing.assert_array_equal(masked[key], batch[key])
  for r in range(batch["inputs"].shape[0]):
    for start, end in _pieces(masked["segment_ids"][r]):
      assert start // piece == (end - 1) // piece  # within one piece-long chunk of the row
      assert len(set(batch["segment_ids"][r, start:end])) == 1  # within one document
      np.testing.assert_array_equal(masked["positions"][r, start:end], np.arange(end - start))
      assert start % piece == 0 or batch["positions"][r, start] == 0  # cut only where allowed

  assert bucketed["inputs"].shape == (6 * length // piece, piece)
  for key in FEATURES:
    np.testing.assert_array_equal(bucketed[key], masked[key].reshape(-1, piece), err_msg=key)
  chunks = masked["segment_ids"].reshape(-1, piece)
  for ids, chunk in zip(bucketed["segment_ids"], chunks, strict=True):
    np.testing.assert_array_equal(_same_segment(ids), _same_segment(chunk))
    np.testing.assert_array_equal(ids > 0, chunk > 0)
    assert ids[ids > 0].min(initial=1) == 1
  assert warmup_batch(batch, length, buckets=True) is batch  # a full-length piece: no cut


def test_warmup_batches_of_the_pipeline_agree_in_both_layouts(config):
  """The train iterator with bucketed warmup, masked warmup and none: the same tokens every
  step, shaped by that step's piece length, then the plain batches once warmup ends. With
  `fixed=sequences` each row keeps only its first piece of the masked cut."""
  config.update(steps=20)
  config.data.seq_len_warmup.update(start=6, steps=5)  # seq_len 32: pieces 4, 8, 16, then 32
  configs = {}
  for name, start, buckets, fixed in (("bucketed", 6, True, "tokens"),
                                      ("masked", 6, False, "tokens"),
                                      ("plain", 0, True, "tokens"),
                                      ("sequences", 6, True, "sequences")):
    configs[name] = config.copy_and_resolve_references()
    configs[name].data.seq_len_warmup.update(start=start, buckets=buckets, fixed=fixed)
  iterators = {name: _iterator(c) for name, c in configs.items()}
  for step in range(7):
    batches = {name: next(it) for name, it in iterators.items()}
    piece = piece_len(step, config)
    bucketed, masked, plain = batches["bucketed"], batches["masked"], batches["plain"]
    assert bucketed["inputs"].shape == (4 * 32 // piece, piece)
    assert masked["inputs"].shape == plain["inputs"].shape == (4, 32)
    for key in ("inputs", "targets", "weights"):
      np.testing.assert_array_equal(masked[key], plain[key])
    for key in FEATURES:
      np.testing.assert_array_equal(bucketed[key], masked[key].reshape(-1, piece))
      np.testing.assert_array_equal(batches["sequences"][key], masked[key][:, :piece])
    assert masked["positions"].max() < piece
    if step >= 5:
      for key in plain:
        np.testing.assert_array_equal(bucketed[key], plain[key])
        np.testing.assert_array_equal(masked[key], plain[key])
  for it in iterators.values():
    it.close()
