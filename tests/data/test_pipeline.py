"""The Grain pipeline: batch contract, per-process shards, determinism, resume and eval batches."""

import json
import re

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from data import pipeline, sources
from data import tokenizer as tokenizer_lib

FEATURES = {
    "inputs": np.int32,
    "targets": np.int32,
    "segment_ids": np.int32,
    "positions": np.int32,
    "weights": np.float32,
}


def _train_iterator(config, tokenizer, process_index=0, process_count=1):
  return pipeline.make_train_iterator(
      config, tokenizer, process_index=process_index, process_count=process_count
  )


def _assert_equal_batches(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


def _epoch_documents(config, tokenizer, process_index, process_count) -> list[str]:
  """The texts of the documents of this process's first epoch, in the order they are read.

  With the bytes tokenizer and no row shuffle, the inputs of consecutive batches are the
  documents' bytes, each after one BOS.
  """
  config.data.shuffle_window = 1
  shard = range(process_index, len(sources.load_source(config).train), process_count)
  iterator = _train_iterator(config, tokenizer, process_index, process_count)
  stream = []
  while stream.count(tokenizer.bos_id) <= len(shard):  # One more BOS ends the last document.
    stream.extend(next(iterator)["inputs"].ravel().tolist())
  iterator.close()
  stream = np.asarray(stream)
  docs = np.split(stream, np.flatnonzero(stream == tokenizer.bos_id))  # docs[0] is empty.
  return [tokenizer.decode(d) for d in docs[1 : len(shard) + 1]]


@pytest.mark.parametrize("process_count", [1, 2])
def test_batches_follow_the_contract(config, process_count):
  tokenizer = tokenizer_lib.get_tokenizer(config)
  iterator = _train_iterator(config, tokenizer, 0, process_count)
  for _ in range(5):
    batch = next(iterator)
    assert {k: v.dtype for k, v in batch.items()} == FEATURES
    for value in batch.values():
      assert value.shape == (config.batch_size // process_count, config.seq_len)
    assert batch["weights"].all()  # Endless training rows are packed full.
    assert batch["targets"].max() < tokenizer.vocab_size
  iterator.close()


def test_processes_split_the_documents(config):
  config.data.tokenizer = "bytes"
  tokenizer = tokenizer_lib.get_tokenizer(config)
  train_texts = [r["text"].decode() for r in sources.load_source(config).train]
  single = _epoch_documents(config, tokenizer, 0, 1)
  first, second = (_epoch_documents(config, tokenizer, i, 2) for i in range(2))
  assert sorted(single) == sorted(train_texts)  # Each document exactly once per epoch.
  assert sorted(first + second) == sorted(train_texts)
  markers = [set(re.findall(r"# (doc-\d+)", "".join(docs))) for docs in (first, second)]
  assert markers[0] and markers[1] and not markers[0] & markers[1]


def test_shuffle_is_seeded_and_changes_each_epoch(config):
  config.data.tokenizer = "bytes"
  tokenizer = tokenizer_lib.get_tokenizer(config)
  first = _epoch_documents(config, tokenizer, 0, 1)
  assert _epoch_documents(config, tokenizer, 0, 1) == first
  config.seed = 1
  assert _epoch_documents(config, tokenizer, 0, 1) != first
  config.data.shuffle = False
  stored = [r["text"].decode() for r in sources.load_source(config).train]
  assert _epoch_documents(config, tokenizer, 0, 1) == stored


def test_row_shuffle_permutes_rows_within_windows(config):
  """Shuffled rows are the unshuffled rows, reordered within each window of rows."""
  config.data.tokenizer = "bytes"
  config.data.shuffle_window = 8  # two batches of 4 rows
  tokenizer = tokenizer_lib.get_tokenizer(config)

  def rows(n_batches: int) -> list[tuple]:
    iterator = _train_iterator(config, tokenizer)
    out = [tuple(r) for _ in range(n_batches) for r in next(iterator)["inputs"].tolist()]
    iterator.close()
    return out

  shuffled = rows(6)
  config.data.shuffle_window = 1
  plain = rows(6)
  assert shuffled != plain
  for start in range(0, 24, 8):
    assert sorted(shuffled[start : start + 8]) == sorted(plain[start : start + 8])


@pytest.mark.parametrize("steps", [0, 1, 4, 7, 19])
def test_resume_from_state(config, steps):
  tokenizer = tokenizer_lib.get_tokenizer(config)
  first = _train_iterator(config, tokenizer)
  for _ in range(steps):
    next(first)
  state = json.loads(json.dumps(first.get_state()))  # As Orbax saves it.
  expected = [next(first) for _ in range(3)]
  resumed = _train_iterator(config, tokenizer)
  next(resumed)  # A restored iterator may already have run ahead.
  resumed.set_state(state)
  for batch in expected:
    _assert_equal_batches(next(resumed), batch)
  first.close()
  resumed.close()


def test_resume_through_orbax_checkpoint_manager(config, tmp_path):
  tokenizer = tokenizer_lib.get_tokenizer(config)
  options = ocp.CheckpointManagerOptions(enable_async_checkpointing=True)
  iterator = _train_iterator(config, tokenizer)
  expected = []  # The batch after each step's checkpoint.
  with ocp.CheckpointManager(tmp_path / "checkpoints", options=options) as manager:
    for step in range(4):
      manager.save(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
      expected.append(next(iterator))
    manager.wait_until_finished()
  iterator.close()

  for step in [0, 3]:
    resumed = _train_iterator(config, tokenizer)
    with ocp.CheckpointManager(tmp_path / "checkpoints", options=options) as manager:
      restore = grain.checkpoint.CheckpointRestore(resumed)
      manager.restore(step, args=ocp.args.Composite(data=restore))
    _assert_equal_batches(next(resumed), expected[step])
    resumed.close()


def test_eval_batches_are_fixed(config):
  tokenizer = tokenizer_lib.get_tokenizer(config)
  batches = pipeline.make_eval_batches(config, tokenizer, process_index=0, process_count=1)
  assert len(batches) == config.eval_batches
  for batch in batches:
    assert {k: v.dtype for k, v in batch.items()} == FEATURES
    assert batch["inputs"].shape == (config.batch_size, config.seq_len)
  again = pipeline.make_eval_batches(config, tokenizer, process_index=0, process_count=1)
  for a, b in zip(batches, again, strict=True):
    _assert_equal_batches(a, b)


def test_small_validation_split_is_repeated(config, caplog):
  config.data.tokenizer = "bytes"
  config.eval_batches = 40
  tokenizer = tokenizer_lib.get_tokenizer(config)
  batches = pipeline.make_eval_batches(config, tokenizer, process_index=1, process_count=2)
  assert len(batches) == 40 and all(b["weights"].all() for b in batches)
  assert "repeating it" in caplog.text
