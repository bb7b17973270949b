"""Bad data configs fail early with one-line errors naming the value and the valid choices."""

import os

import pytest

from data import pipeline, sources, storage
from data import tokenizer as tokenizer_lib
from efficiency.config import resolve
from tests.helpers import data_config


def test_unknown_data_name(config):
  config.data.name = "no_such_corpus"
  with pytest.raises(
      ValueError,
      match=r"^data.name=.no_such_corpus. is unknown; valid choices: jsonl, parquet, stdlib, "
      r"stdlib_tests, text ",
  ):
    sources.load_source(config)


def test_missing_corpus_root(config, tmp_path):
  config.data.corpus_root = str(tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match=r"data.corpus_root='.*missing' does not exist"):
    sources.load_source(config)


def test_bad_validation_percent(config):
  config.data.validation_percent = 0
  with pytest.raises(ValueError, match=r"data.validation_percent=0 must be between 1 and 99"):
    resolve(config, 1)


def test_empty_validation_split(tmp_path):
  (tmp_path / "corpus").mkdir()
  (tmp_path / "corpus" / "only.py").write_text("x = 1\n")
  config = data_config(str(tmp_path / "corpus"), str(tmp_path / "data"))
  with pytest.raises(ValueError, match=r"the (train|validation) split of .* is empty"):
    sources.load_source(config)


def test_data_dir_that_cannot_be_created(corpus, tmp_path):
  (tmp_path / "file").write_text("")
  config = data_config(corpus[0], str(tmp_path / "file" / "data"))
  with pytest.raises(PermissionError, match=r"cannot create data directory '.*file/data'"):
    sources.load_source(config)


def test_read_only_data_dir(corpus, tmp_path, monkeypatch):
  (tmp_path / "data").mkdir(mode=0o555)
  config = data_config(corpus[0], str(tmp_path / "data"))
  # Root may write to any directory, so report the directory as not writable instead.
  monkeypatch.setattr(storage.os, "access", lambda path, mode: False)
  with pytest.raises(PermissionError, match=r"data directory '.*data' is not writable"):
    sources.load_source(config)


def test_data_dir_from_environment(config, monkeypatch, tmp_path):
  config.data.data_dir = ""
  monkeypatch.setenv("EFFICIENCY_DATA_DIR", str(tmp_path))
  assert storage.data_dir(config) == str(tmp_path)
  monkeypatch.delenv("EFFICIENCY_DATA_DIR")
  assert storage.data_dir(config) == os.path.expanduser("~/.cache/efficiency/data")


def test_batch_not_divisible_by_processes(config):
  with pytest.raises(ValueError, match=r"batch_size=4 is not divisible by process_count=3"):
    resolve(config, 1, process_count=3)


def test_more_processes_than_documents(config):
  config.batch_size = 64
  tokenizer = tokenizer_lib.get_tokenizer(config)
  with pytest.raises(ValueError, match=r"the validation split has \d+ documents, too few"):
    pipeline.make_eval_batches(config, tokenizer, process_index=31, process_count=32)


def test_filter_chain_that_drops_everything(config):
  config.data.filters = "length"
  config.data.filter.min_tokens = 10**9
  tokenizer = tokenizer_lib.get_tokenizer(config)
  with pytest.raises(ValueError, match=r"data.filters='length' drops every document"):
    pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1)


def test_text_source_needs_a_glob(config):
  config.data.name = "text"
  with pytest.raises(ValueError, match=r"data.name='text' needs data.text_glob"):
    resolve(config, 1)
  config.data.text_glob = "/nonexistent/*.txt"
  with pytest.raises(FileNotFoundError, match=r"data.text_glob='/nonexistent/\*.txt' matches no"):
    sources.load_source(config)
