"""Prepared data: bad documents counted, filters used by the train iterator, the report, the
cache, `python -m data.prepare`, and exact resume with filters, curriculum and warmup."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data import pipeline, prepared, sources, text_corpus
from data import tokenizer as tokenizer_lib
from tests.helpers import ROOT, data_config


def _iterator(config, process_index=0, process_count=1):
  tokenizer = tokenizer_lib.get_tokenizer(config)
  return pipeline.make_train_iterator(
      config, tokenizer, process_index=process_index, process_count=process_count
  )


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory) -> Path:
  """20 good text files, plus an empty one, an invalid UTF-8 one and a too-long one."""
  root = tmp_path_factory.mktemp("texts")
  for i in range(20):
    (root / f"doc{i}.txt").write_text(f"document {i}: " + "some words here " * (5 + i) + "\n")
  (root / "empty.txt").write_text("\n  \n")
  (root / "bad.txt").write_bytes(b"caf\xe9 \xff\xfe\n")
  (root / "huge.txt").write_text("x" * 5000)
  return root


def _text_config(folder, data_dir, **data):
  config = data_config("", str(data_dir), name="text", text_glob=str(folder), tokenizer="bytes",
                       max_doc_bytes=4000, shuffle_window=1)
  config.data.update(data)
  return config


def test_bad_documents_are_counted_and_never_trained_on(text_folder, tmp_path):
  config = _text_config(text_folder, tmp_path)
  result = prepared.prepare(config, tokenizer_lib.get_tokenizer(config))
  bad = result.report["bad_documents"]
  for kind in ("empty", "invalid_utf8", "too_long"):
    assert bad["train"][kind] + bad["validation"][kind] == 1, kind
  splits = result.report["splits"]
  assert splits["train"]["documents"] + splits["validation"]["documents"] == 20
  batch = next(_iterator(config))
  assert batch["inputs"].shape == (4, 32)
  tokenizer = tokenizer_lib.get_tokenizer(config)
  text = tokenizer.decode(batch["inputs"].ravel())
  assert "\ufffd" not in text and "xxxx" not in text


def test_train_iterator_reads_only_documents_the_filters_keep(text_folder, tmp_path):
  config = _text_config(text_folder, tmp_path, filters="length", shuffle=False)
  config.data.filter.update(min_tokens=150, max_tokens=10_000)
  tokenizer = tokenizer_lib.get_tokenizer(config)
  result = prepared.prepare(config, tokenizer)
  (stats,) = result.report["filters"]
  assert stats["dropped_documents"] > 0 and stats["kept_documents"] == len(result.train_N)
  records = sources.load_source(config).train
  kept = {records[int(i)]["text"].decode() for i in result.train_N}
  iterator = _iterator(config)
  stream = np.concatenate([next(iterator)["inputs"].ravel() for _ in range(40)])
  docs = [tokenizer.decode(d) for d in np.split(stream, np.flatnonzero(stream == 1))[1:-1]]
  assert docs and set(docs) <= kept


def test_prepared_data_is_cached(config, monkeypatch):
  tokenizer = tokenizer_lib.get_tokenizer(config)
  first = prepared.prepare(config, tokenizer)
  monkeypatch.setattr(prepared, "_compute", lambda *a: pytest.fail("recomputed"))
  second = prepared.prepare(config, tokenizer)
  np.testing.assert_array_equal(first.train_N, second.train_N)
  key = prepared.cache_key(config)
  config.data.filters = "exact_dedup"
  assert prepared.cache_key(config) != key


def test_prepare_command_writes_the_report(corpus, shared_data_dir, tmp_path):
  flags = [f"--config.data.corpus_root={corpus[0]}", f"--config.data.data_dir={shared_data_dir}",
           "--config.data.validation_percent=20", "--config.model.vocab_size=400",
           "--config.data.filters=length,exact_dedup,near_dup,quality",
           "--config.data.curriculum.difficulty=compression"]
  proc = subprocess.run(
      [sys.executable, "-m", "data.prepare", f"--workdir={tmp_path}", *flags],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "prepared:" in proc.stdout
  report = json.loads((tmp_path / "data_report.json").read_text())
  assert [f["name"] for f in report["filters"]] == ["length", "exact_dedup", "near_dup", "quality"]
  for stats in report["filters"]:
    assert stats["kept_documents"] + stats["dropped_documents"] > 0
  assert report["filters"][1]["dropped_documents"] == 0  # the corpus has no exact duplicates
  assert set(report["splits"]) == {"train_before_filters", "train", "validation"}
  assert 1 < report["bytes_per_token"] < 8
  assert 0.9 < report["packing"]["efficiency"] <= 1
  assert set(report["curriculum"]["scores"]) == {"mean", "min", "p10", "p50", "p90", "max"}


SETUPS = {
    "filters": dict(filters="length,exact_dedup,near_dup,quality"),
    "curriculum": dict(curriculum=dict(difficulty="compression", pacing="step", fraction=0.3)),
    "warmup": dict(seq_len_warmup=dict(start=8, steps=5)),
}


@pytest.mark.parametrize("setup", sorted(SETUPS))
@pytest.mark.parametrize("steps", [0, 3])
def test_resume_from_state_with_filters_curriculum_and_warmup(config, setup, steps):
  config.update(steps=20)
  config.data.update(SETUPS[setup])
  config.data.filter.min_tokens = 4
  first = _iterator(config)
  for _ in range(steps):
    next(first)
  state = json.loads(json.dumps(first.get_state()))  # As Orbax saves it.
  expected = [next(first) for _ in range(4)]
  resumed = _iterator(config)
  next(resumed)
  resumed.set_state(state)
  for batch in expected:
    got = next(resumed)
    for key in batch:
      np.testing.assert_array_equal(got[key], batch[key])
  first.close()
  resumed.close()


def test_text_split_does_not_depend_on_where_the_folder_lives(text_folder, tmp_path):
  """Files go to a split by their path inside the folder, so a moved corpus keeps its split."""

  def split_names(pattern: str) -> dict[str, list[str]]:
    builder = text_corpus.TextCorpus(
        config=text_corpus.make_config(pattern, 20), data_dir=str(tmp_path / "tfds")
    )
    generators = builder._split_generators(None)
    return {split: sorted(Path(key).name for key, _ in gen) for split, gen in generators.items()}

  moved = tmp_path / "elsewhere" / "texts"
  shutil.copytree(text_folder, moved)
  here = split_names(str(text_folder))
  assert here["train"] and here["validation"]
  assert split_names(str(moved / "*.txt")) == here
