"""Filters on documents built to trigger them; the chain's counts and its errors."""

import random

import numpy as np
import pytest

from configs.default import get_config
from data import filters
from data.filters import near_dup, quality
from efficiency.config import resolve


def _docs(texts: list[str], **params) -> filters.Documents:
  config = get_config()
  config.data.filter.update(params)
  tokens = [np.arange(len(t.split()), dtype=np.int32) for t in texts]  # one token per word
  return filters.Documents(texts, tokens, np.arange(len(texts)), [], config)


def _words(rng: random.Random, n: int) -> list[str]:
  return [f"w{rng.randrange(5000)}" for _ in range(n)]


def test_length_bounds():
  docs = _docs(["a " * 3, "a " * 10, "a " * 50], min_tokens=5, max_tokens=20)
  assert filters.FILTERS["length"](docs).tolist() == [False, True, False]


def test_exact_dedup_keeps_the_first_copy():
  docs = _docs(["x = 1\n", "y = 2\n", "x = 1\n", "x = 1 \n"])
  assert filters.FILTERS["exact_dedup"](docs).tolist() == [True, True, False, True]


def test_near_dup_finds_planted_near_duplicates():
  rng = random.Random(0)
  originals = [_words(rng, 300) for _ in range(20)]
  texts = [" ".join(w) for w in originals]
  planted = {}
  for k, source in enumerate([3, 7, 11]):  # copies with 2 of 300 words changed
    words = list(originals[source])
    for pos in rng.sample(range(300), 2):
      words[pos] = f"changed{k}"
    planted[len(texts)] = source
    texts.append(" ".join(words))
  texts.append(" ".join(originals[5][:150] + _words(rng, 150)))  # half shared: not a near-dup
  keep = filters.FILTERS["near_dup"](_docs(texts))
  assert np.flatnonzero(~keep).tolist() == sorted(planted)


def test_near_dup_signature_estimates_jaccard():
  rng = random.Random(1)
  a = _words(rng, 400)
  b = a[:200] + _words(rng, 200)
  sig = near_dup.signatures([" ".join(a), " ".join(b)], 256)
  sa, sb = set(near_dup.shingles(" ".join(a))), set(near_dup.shingles(" ".join(b)))
  jaccard = len(sa & sb) / len(sa | sb)
  assert abs(np.mean(sig[0] == sig[1]) - jaccard) < 0.1


@pytest.mark.parametrize(
    "text,measure",
    [
        ("!!!! ;;;; ))(( ,,,, x\n", "alnum_ratio"),
        ("x = 1\n" + "\u2592\u2593\u2591" * 40 + "\n", "symbol_ratio"),
        ("x = " + "1" * 2000 + "\n", "max_line_chars"),
        ("print(1)\n" * 10 + "y = 2\n", "repeated_line_ratio"),
    ],
)
def test_quality_heuristics(text, measure):
  good = "def f(x):\n    return x + 1\n\nclass A:\n    pass\n"
  keep = filters.FILTERS["quality"](_docs([good, text]))
  assert keep.tolist() == [True, False], quality.measures(text)[measure]


def test_chain_reports_kept_and_dropped_documents_and_tokens():
  texts = ["a b c d e f", "a b c d e f", "a b", "g h i j k l m"]
  kept, stats = filters.apply_chain(
      _docs(texts, min_tokens=3, max_tokens=10), ["length", "exact_dedup"]
  )
  assert kept.texts == ["a b c d e f", "g h i j k l m"]
  assert kept.indices.tolist() == [0, 3]
  assert stats == [
      {"name": "length", "kept_documents": 3, "dropped_documents": 1, "kept_tokens": 19,
       "dropped_tokens": 2},
      {"name": "exact_dedup", "kept_documents": 2, "dropped_documents": 1, "kept_tokens": 13,
       "dropped_tokens": 6},
  ]


def test_chain_that_drops_everything_is_an_error():
  with pytest.raises(ValueError, match=r"data.filters='length' drops every document"):
    filters.apply_chain(_docs(["a b", "c d"], min_tokens=5), ["length"])


def test_unknown_filter():
  with pytest.raises(ValueError, match=r"data.filters: 'fuzzy' is unknown; valid choices: exact"):
    config = get_config()
    config.data.filters = "length, fuzzy"
    resolve(config, 1)
