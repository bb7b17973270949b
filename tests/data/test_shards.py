"""Data shards: the global batches and the data position do not depend on the process count.

With data.shards=S, one process reading all S shards and P processes reading S/P each assemble
the same global batches, and a position saved by one process count restores on another.
"""

import json

import numpy as np
import pytest

from data import pipeline
from data import tokenizer as tokenizer_lib
from efficiency.errors import ConfigError


def _iterators(config, tokenizer, process_count):
  return [
      pipeline.make_train_iterator(config, tokenizer, process_index=p, process_count=process_count)
      for p in range(process_count)
  ]


def _global(iterators):
  locals_ = [next(it) for it in iterators]
  return {k: np.concatenate([b[k] for b in locals_]) for k in locals_[0]}


def _save(iterators, directory):
  """The files Grain's checkpoint handler writes, one per process."""
  directory.mkdir()
  for p, it in enumerate(iterators):
    (directory / f"process_{p}-of-{len(iterators)}.json").write_text(json.dumps(it.get_state()))


def _assert_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


@pytest.fixture
def sharded_config(config):
  config.data.shards = 4
  config.batch_size = 8
  config.data.shuffle_window = 4  # each shard fills its window before its first batch
  return config


@pytest.mark.parametrize("ordering", ["shuffled", "curriculum_and_warmup"])
def test_any_process_count_assembles_the_same_global_batches(sharded_config, ordering):
  if ordering == "curriculum_and_warmup":
    sharded_config.data.curriculum.difficulty = "length"
    sharded_config.data.seq_len_warmup.update(start=4, steps=3)
  tokenizer = tokenizer_lib.get_tokenizer(sharded_config)
  one, two, four = (_iterators(sharded_config, tokenizer, p) for p in (1, 2, 4))
  for _ in range(4):
    reference = _global(one)
    _assert_equal(_global(two), reference)
    _assert_equal(_global(four), reference)
  for it in one + two + four:
    it.close()


@pytest.mark.parametrize(
    "saved_by,resumed_by", [(2, 1), (1, 4), pytest.param(4, 2, marks=pytest.mark.slow)]
)
def test_a_position_saved_on_one_process_count_resumes_on_another(
    sharded_config, tmp_path, saved_by, resumed_by
):
  tokenizer = tokenizer_lib.get_tokenizer(sharded_config)
  uninterrupted = _iterators(sharded_config, tokenizer, 1)
  expected = [_global(uninterrupted) for _ in range(6)]
  saving = _iterators(sharded_config, tokenizer, saved_by)
  for step in range(3):
    _assert_equal(_global(saving), expected[step])
  _save(saving, tmp_path / "data")
  resumed = _iterators(sharded_config, tokenizer, resumed_by)
  for it in resumed:
    it.restore_files(tmp_path / "data")
  for step in range(3, 6):
    _assert_equal(_global(resumed), expected[step])
  for it in uninterrupted + saving + resumed:
    it.close()


def test_eval_batches_do_not_depend_on_the_process_count(sharded_config):
  sharded_config.data.shards = 2  # the tiny validation split has 3 documents
  tokenizer = tokenizer_lib.get_tokenizer(sharded_config)
  batches = lambda p, i: pipeline.make_eval_batches(
      sharded_config, tokenizer, process_index=i, process_count=p)
  one = batches(1, 0)
  two = [batches(2, i) for i in range(2)]
  for step, reference in enumerate(one):
    _assert_equal({k: np.concatenate([b[step][k] for b in two]) for k in reference}, reference)


def test_shards_must_split_over_processes_and_the_batch(sharded_config):
  tokenizer = tokenizer_lib.get_tokenizer(sharded_config)
  with pytest.raises(ConfigError, match="data.shards=4 must be a multiple of process_count=3"):
    pipeline.make_train_iterator(sharded_config, tokenizer, process_index=0, process_count=3)
