"""Curriculum: pacing values, a deterministic order that follows its pacing, difficulty scores."""

import numpy as np
import pytest

from configs.default import get_config
from data import filters
from data.curriculum import difficulty, pacing
from data.curriculum.order import CHUNK, curriculum_order
from efficiency.config import resolve


def _config(**curriculum):
  config = get_config()
  config.update(steps=100, batch_size=4, seq_len=32)
  config.data.curriculum.update(difficulty="length", start=0.1, fraction=0.5)
  config.data.curriculum.update(curriculum)
  return config


@pytest.mark.parametrize(
    "name,values", [("linear", [0.1, 0.55, 1.0]), ("root", [0.1, 0.7106, 1.0]),
                    ("step", [0.1, 0.55, 1.0])],
)
def test_pacing_starts_at_c0_and_reaches_one(name, values):
  c = _config(pacing=name, stages=2).data.curriculum
  got = [pacing.PACINGS[name](p, c) for p in (0.0, 0.5, 1.0)]
  np.testing.assert_allclose(got, values, atol=1e-4)
  assert pacing.PACINGS["step"](0.49, c) == 0.1


def test_order_is_deterministic_in_the_seed():
  rng = np.random.default_rng(0)
  scores, tokens = rng.random(200), rng.integers(5, 50, 200)
  config = _config()
  a, b = curriculum_order(scores, tokens, config), curriculum_order(scores, tokens, config)
  np.testing.assert_array_equal(a, b)
  config.seed = 1
  assert not np.array_equal(a, curriculum_order(scores, tokens, config))


@pytest.mark.parametrize("name", ["linear", "root", "step"])
def test_order_follows_the_pacing(name):
  n = 200
  scores = np.arange(n, dtype=np.float64)[::-1].copy()  # document n-1 is the easiest
  tokens = np.full(n, 31)  # 32 positions each: one row
  config = _config(pacing=name)
  order = curriculum_order(scores, tokens, config)
  rank = n - 1 - order  # 0 = easiest
  ramp_docs = int(config.data.curriculum.fraction * 100 * 4)  # rows (= documents) in the ramp
  c = config.data.curriculum
  for start in range(0, ramp_docs, CHUNK):
    allowed = np.ceil(pacing.PACINGS[name](start / ramp_docs, c) * n)
    assert rank[start : start + CHUNK].max() < allowed
  assert rank[:CHUNK].max() < 0.1 * n  # the first draws come from the easiest tenth
  # After the ramp: whole shuffled epochs of every document.
  tail = order[ramp_docs + (-ramp_docs) % CHUNK :]
  assert sorted(tail[:n]) == list(range(n))


def test_difficulty_scores():
  config = get_config()
  texts = ["a" * 400, "the quick brown fox jumps over the lazy dog, 0123456789!"]
  tokens = [np.zeros(10, np.int32), np.zeros(3, np.int32)]
  records = [{"grade": 2.5}, {"grade": "1"}]
  docs = filters.Documents(texts, tokens, np.arange(2), records, config)
  assert difficulty.length(docs).tolist() == [10, 3]
  compression = difficulty.compression(docs)
  assert compression[0] < compression[1]  # repeated text compresses better: easier
  config.data.curriculum.field = "grade"
  assert difficulty.field(docs).tolist() == [2.5, 1.0]
  config.data.curriculum.field = "nope"
  with pytest.raises(ValueError, match=r"data.curriculum.field='nope' is not a field .*: grade"):
    difficulty.field(docs)


def test_unknown_names():
  with pytest.raises(ValueError, match=r"difficulty='hard' is unknown; valid choices: none, "):
    resolve(_config(difficulty="hard"), 1)
  with pytest.raises(ValueError, match=r"pacing='fast' is unknown; valid choices: linear, "):
    resolve(_config(pacing="fast"), 1)
