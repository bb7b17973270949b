"""The reference model of an earlier run: per-document losses, perplexity filter, difficulty."""

import jax
import numpy as np
import pytest

from data import filters
from data import tokenizer as tokenizer_lib
from data.curriculum import difficulty
from efficiency.config import resolve
from efficiency.train.inputs import ReferenceScorer, prepared_of
from efficiency.train.loop import train_and_evaluate
from tests.helpers import data_config


@pytest.fixture(scope="module")
def reference_run(corpus, shared_data_dir, tmp_path_factory) -> str:
  """A 3-step tiny run: its workdir has config.json and a checkpoint."""
  config = data_config(corpus[0], shared_data_dir)
  config.update(steps=3, eval_every=3, checkpoint_every=3, log_every=1)
  config.model.update(num_layers=1, d_model=32, num_heads=2, num_kv_heads=1, d_ff=64)
  workdir = str(tmp_path_factory.mktemp("reference"))
  train_and_evaluate(resolve(config, jax.device_count()), workdir)
  return workdir


def _docs(config, texts):
  tokens = [np.zeros(len(t), np.int32) for t in texts]
  scorer = ReferenceScorer(config.data.reference_workdir)
  return filters.Documents(texts, tokens, np.arange(len(texts)), [], config, scorer)


def test_perplexity_filter_keeps_the_lowest_loss_fraction(config, corpus, reference_run):
  config.data.reference_workdir = reference_run
  texts = sorted(corpus[1].values())[:10]
  losses = difficulty.reference_loss(_docs(config, texts))
  assert losses.shape == (10,) and np.all(np.isfinite(losses)) and np.all(losses > 0)
  config.data.filter.keep_fraction = 0.3
  keep = filters.FILTERS["perplexity"](_docs(config, texts))
  assert keep.sum() == 3
  assert losses[keep].max() <= losses[~keep].min()


def test_prepare_with_perplexity_filter(config, reference_run):
  config.data.update(reference_workdir=reference_run, filters="perplexity")
  result = prepared_of(config, tokenizer_lib.get_tokenizer(config))
  (stats,) = result.report["filters"]
  assert stats["name"] == "perplexity" and stats["kept_documents"] == len(result.train_N)
  assert stats["dropped_documents"] == pytest.approx(stats["kept_documents"], abs=1)


def test_missing_reference_workdir(config, tmp_path):
  config.data.reference_workdir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match=r"has no config.json; train one first: python"):
    ReferenceScorer(config.data.reference_workdir)(["x"])
