"""The stdlib corpus builder: file selection, the deterministic split and config names."""

from data import file_corpus, sources, stdlib_corpus
from tests.helpers import data_config, write_corpus


def _split_texts(source: sources.Source) -> dict[str, dict[str, str]]:
  return {
      split: {r["path"].decode(): r["text"].decode() for r in records}
      for split, records in [("train", source.train), ("validation", source.validation)]
  }


def test_python_files_skips_tests_and_site_packages(tmp_path):
  expected = write_corpus(tmp_path, num_files=5)
  files = stdlib_corpus.python_files(str(tmp_path))
  assert files == sorted([*expected, "empty.py", "latin1.py"])


def test_splits_are_disjoint_complete_and_stable(corpus, tmp_path):
  root, texts = corpus
  first = _split_texts(sources.load_source(data_config(root, str(tmp_path / "a"))))
  rebuilt = _split_texts(sources.load_source(data_config(root, str(tmp_path / "b"))))
  assert first == rebuilt
  assert first["train"] and first["validation"]
  assert not first["train"].keys() & first["validation"].keys()
  assert first["train"] | first["validation"] == texts  # Empty and non-UTF-8 files are skipped.
  for path in first["validation"]:
    assert file_corpus.is_validation(path, 20)


def test_prepared_once_then_read(corpus, tmp_path, monkeypatch):
  config = data_config(corpus[0], str(tmp_path))
  sources.load_source(config)

  def fail(*args, **kwargs):
    raise AssertionError("prepared twice")

  monkeypatch.setattr(stdlib_corpus.StdlibCorpus, "download_and_prepare", fail)
  assert len(sources.load_source(config).train) > 0


def test_config_names_separate_roots_and_percents(tmp_path):
  default = stdlib_corpus.make_config(stdlib_corpus.default_root(), 5).name
  assert default.startswith("python3.") and default.endswith("-val5")
  names = {
      stdlib_corpus.make_config(str(tmp_path / root), percent).name
      for root in ["a", "b"]
      for percent in [5, 10]
  }
  assert len(names) == 4 and default not in names


def test_preparation_finished_by_another_process_meanwhile(corpus, tmp_path, monkeypatch):
  """A builder made before another process's preparation finished (found prepared a moment
  later) holds no split metadata: the splits come from one made after the data exists."""
  config = data_config(corpus[0], str(tmp_path))
  real = stdlib_corpus.StdlibCorpus.is_prepared

  def prepared_meanwhile(builder):
    if not real(builder):  # the other process finishes now
      monkeypatch.setattr(stdlib_corpus.StdlibCorpus, "is_prepared", real)
      sources.load_source(config)
    return real(builder)

  monkeypatch.setattr(stdlib_corpus.StdlibCorpus, "is_prepared", prepared_meanwhile)
  source = sources.load_source(config)
  assert len(source.train) > 0 and len(source.validation) > 0
