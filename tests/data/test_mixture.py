"""Weighted mixtures: proportions by document (chi-square), exact resume through the iterator's
JSON state, a resume with other weights continuing each source where it stopped, per-source eval
batches equal to each source's own, pooled eval results equal to evaluating everything at once,
and the mixture's tokenizer trained on every source."""

import json
from pathlib import Path

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest
from scipy import stats

from data import mixture, pipeline, sources
from data import tokenizer as tokenizer_lib
from data.prepared import prepare
from efficiency import evaluation
from efficiency.evaluation import Evaluator
from efficiency.model.transformer import Transformer
from tests.helpers import data_config, tiny_model_config

DOCS = {"a": 1500, "b": 1000}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
  """Two JSONL sources of short documents, each naming its source and number: `a00042 ...`."""
  root = tmp_path_factory.mktemp("mix")
  for label, count in DOCS.items():
    filler = "xyz" if label == "a" else "0123456789"
    lines = [json.dumps({"text": f"{label}{i:05d} {filler[: i % len(filler) + 1]}"})
             for i in range(count)]
    (root / f"{label}.jsonl").write_text("\n".join(lines) + "\n")
  return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
  """One data dir for the module: the sources are built and prepared once."""
  return tmp_path_factory.mktemp("mix_data")


def _config(shards: Path, data_dir: Path, weights=(0.5, 0.5), **data) -> ml_collections.ConfigDict:
  data = {"tokenizer": "bytes", "validation_percent": 5, **data}
  config = data_config("", str(data_dir), **data)
  config.batch_size, config.seq_len = 8, 64
  config.data.shuffle_window = 16
  config.data.mixture = ml_collections.ConfigDict({
      label: {"weight": w, "name": "jsonl", "files": str(shards / f"{label}.jsonl")}
      for label, w in zip(DOCS, weights, strict=True)
  })
  return config


def _iterator(config):
  return pipeline.make_train_iterator(
      config, tokenizer_lib.get_tokenizer(config), process_index=0, process_count=1
  )


def _names(batches) -> list[str]:
  """Each document's name (`a00042`), in stream order; a document cut at a row's end continues
  in the next row, so the rows are joined first."""
  tokenizer = tokenizer_lib.ByteTokenizer()
  ids = np.concatenate([b["inputs"].ravel() for b in batches])
  ids = ids[ids != tokenizer.pad_id]
  docs = np.split(ids, np.flatnonzero(ids == tokenizer.bos_id))
  return [tokenizer.decode(d).split(" ")[0] for d in docs if len(d) > 1]


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_rows_follow_the_weights(shards, data_dir):
  weights = (0.2, 0.8)
  config = _config(shards, data_dir, weights)
  iterator = _iterator(config)
  batches = _take(iterator, 60)
  iterator.close()
  row_sources = np.concatenate([b["sources"][:, 0] for b in batches])
  assert len(row_sources) == 480
  for b in batches:  # a row is packed from one source, whose id every position carries
    np.testing.assert_array_equal(b["sources"], b["sources"][:, :1] * np.ones_like(b["sources"]))
  counts = np.bincount(row_sources, minlength=2)
  expected = np.array(weights) * counts.sum()
  assert stats.chisquare(counts, expected).pvalue > 0.01, (counts, expected)
  for b in batches:  # documents of source a in rows of source a only
    for row, source in zip(b["inputs"], b["sources"][:, 0], strict=True):
      names = _names([{"inputs": row[None]}])
      whole = [n for n in names if len(n) == 6 and n[0] in "ab" and n[1:].isdigit()]
      assert whole and all(n[0] == "ab"[source] for n in whole)


def test_exact_resume_from_json_state(shards, data_dir):
  config = _config(shards, data_dir, (0.7, 0.3))
  iterator = _iterator(config)
  _take(iterator, 7)
  state = json.loads(json.dumps(iterator.get_state()))
  expected = _take(iterator, 5)
  iterator.close()
  resumed = _iterator(config)
  resumed.set_state(state)
  for want, got in zip(expected, _take(resumed, 5), strict=True):
    assert want.keys() == got.keys()
    for key in want:
      np.testing.assert_array_equal(want[key], got[key])
  resumed.close()


def _source_names(batches, source: int) -> list[str]:
  """The documents of one source's rows, in order (its rows joined are its packed stream)."""
  rows = [row for b in batches for row, s in zip(b["inputs"], b["sources"][:, 0], strict=True)
          if s == source]
  return _names([{"inputs": np.array(rows)}])


def test_resume_with_other_weights_continues_each_source(shards, data_dir):
  config = _config(shards, data_dir, (0.5, 0.5))
  iterator = _iterator(config)
  before = _take(iterator, 10)
  state = json.loads(json.dumps(iterator.get_state()))
  iterator.close()
  resumed = _iterator(_config(shards, data_dir, (0.9, 0.1)))
  resumed.set_state(state)
  after = _take(resumed, 10)
  resumed.close()
  reference = _iterator(config)
  long_run = _take(reference, 40)
  reference.close()
  for source in range(2):
    names = _source_names(before + after, source)[:-1]  # the last may be cut
    assert names == _source_names(long_run, source)[: len(names)]  # none skipped or repeated
  rows = np.concatenate([b["sources"][:, 0] for b in after])
  assert 0.8 < np.mean(rows == 0) < 0.97  # the new weights hold after the resume


def test_per_source_eval_batches_are_each_sources_own(shards, data_dir):
  config = _config(shards, data_dir)
  tokenizer = tokenizer_lib.get_tokenizer(config)
  prepared = prepare(config, tokenizer)
  per_source = pipeline.make_eval_batches_per_source(
      config, tokenizer, process_index=0, process_count=1, prepared=prepared
  )
  for label, sub in mixture.source_configs(config).items():
    alone = pipeline.make_eval_batches(sub, tokenizer, process_index=0, process_count=1)
    assert len(alone) == len(per_source[label]) == config.eval_batches
    for want, got in zip(alone, per_source[label], strict=True):
      for key in want:
        np.testing.assert_array_equal(want[key], got[key])
  # Pooled per-source results equal evaluating every batch together.
  model = Transformer(ml_collections.FrozenConfigDict(
      tiny_model_config(vocab_size=tokenizer.vocab_size)))
  tokens = np.ones((1, 8), np.int32)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), tokens, tokens, tokens)["params"])
  token_bytes = np.asarray(tokenizer.token_bytes, np.float32)
  evaluator = Evaluator(model, token_bytes)
  results = {label: evaluator(params, batches) for label, batches in per_source.items()}
  pooled = evaluation.pooled(results, per_source, token_bytes)
  together = evaluator(params, [b for batches in per_source.values() for b in batches])
  for key in ("eval_loss", "eval_bpb", "accuracy"):
    np.testing.assert_allclose(pooled[key], together[key], rtol=1e-5)
  assert results["a"]["eval_loss"] != results["b"]["eval_loss"]


def test_tokenizer_trains_on_every_source(shards, data_dir):
  config = _config(shards, data_dir, (1.0, 0.0), tokenizer="sentencepiece")
  config.model.vocab_size = 300
  source = sources.load_source(config)
  names = {source.train[i]["text"].decode()[0] for i in range(8)}
  assert names == {"a", "b"}  # interleaved: a weight of 0 still shapes the vocabulary
  tokenizer = tokenizer_lib.get_tokenizer(config)
  assert (Path(source.cache_dir) / "tokenizers" / "sentencepiece_bpe_300.model").exists()
  assert len(tokenizer.encode("0123456789")) < 10  # source b's digit runs became pieces


def test_mixture_config_resolves_and_only_weights_may_change_on_resume():
  from configs.mixture import get_config
  from efficiency.config import resolve
  from efficiency.workdir.resume import resumable

  config = resolve(get_config(), 1)
  assert mixture.labels(config) == ["code", "tests"]
  np.testing.assert_allclose(mixture.weights(config), [0.75, 0.25])
  assert mixture.source_config(config, "tests").data.name == "stdlib_tests"
  assert resumable("data.mixture.code.weight")
  assert not resumable("data.mixture.code.name") and not resumable("data.mixture.code.files")
