"""Tokenizers: lossless round trips, byte counts, caching, determinism and config errors."""

import json
import random
import shutil

import numpy as np
import pytest

from data import tokenizer as tokenizer_lib
from efficiency.config import resolve
from efficiency.errors import ConfigError, MissingPathError
from tests.helpers import ROOT, random_source

HF_FIXTURE = ROOT / "tests" / "fixtures" / "hf" / "qwen2"

_HARD_TEXTS = [
    "",
    "\n\n\n",
    "    def f(self):\n\treturn  x   \n\n\t\t  # é π → 😀\r\n",
    "no newline at end  ",
    "\x00\x7f\u2028 unusual\u00a0whitespace",
]


def _texts(corpus) -> list[str]:
  rng = random.Random(1)
  return [*corpus[1].values(), *_HARD_TEXTS, *(random_source(rng, "unseen") for _ in range(5))]


@pytest.mark.parametrize("name", ["sentencepiece", "bytes"])
def test_round_trip_is_lossless_and_counts_bytes(config, corpus, name):
  config.data.tokenizer = name
  tokenizer = tokenizer_lib.get_tokenizer(config)
  assert tokenizer.token_bytes.shape == (tokenizer.vocab_size,)
  assert tokenizer.vocab_size <= config.model.vocab_size
  for text in _texts(corpus):
    ids = tokenizer.encode(text)
    assert ids.dtype == np.int32 and ((ids > tokenizer.eos_id) & (ids < tokenizer.vocab_size)).all()
    assert tokenizer.decode(ids) == text
    assert tokenizer.token_bytes[ids].sum() == len(text.encode("utf-8"))
  specials = [tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id]
  assert specials == [0, 1, 2] and not tokenizer.token_bytes[specials].any()
  unused = tokenizer.vocab_size
  assert tokenizer.decode([tokenizer.bos_id, *tokenizer.encode("ab"), tokenizer.eos_id]) == "ab"
  assert tokenizer.decode([*tokenizer.encode("ab"), unused, tokenizer.pad_id]) == "ab"


def test_sentencepiece_compresses_the_corpus(config, corpus):
  tokenizer = tokenizer_lib.get_tokenizer(config)
  text = "".join(corpus[1].values())
  assert len(tokenizer.encode(text)) < len(text.encode("utf-8")) / 2


def test_sentencepiece_training_is_deterministic(corpus):
  lines = "".join(corpus[1].values()).split("\n")
  first = tokenizer_lib.SentencePieceTokenizer(tokenizer_lib.train_sentencepiece(lines, 350))
  second = tokenizer_lib.SentencePieceTokenizer(tokenizer_lib.train_sentencepiece(lines, 350))
  text = "".join(corpus[1].values())
  np.testing.assert_array_equal(first.encode(text), second.encode(text))
  np.testing.assert_array_equal(first.token_bytes, second.token_bytes)


def test_sentencepiece_is_trained_once(config, monkeypatch):
  tokenizer_lib.get_tokenizer(config)

  def fail(*args, **kwargs):
    raise AssertionError("trained twice")

  monkeypatch.setattr(tokenizer_lib, "train_sentencepiece", fail)
  assert tokenizer_lib.get_tokenizer(config).vocab_size > 256


def test_unknown_tokenizer(config):
  config.data.tokenizer = "wordpiece"
  with pytest.raises(ValueError, match=r"data.tokenizer='wordpiece'.*bytes, hf, sentencepiece"):
    resolve(config, 1)


@pytest.mark.parametrize("name, minimum", [("bytes", "259"), ("sentencepiece", r"\d+")])
def test_vocab_too_small(config, name, minimum):
  config.data.tokenizer = name
  config.model.vocab_size = 100
  with pytest.raises(ValueError, match=rf"model.vocab_size=100 .* minimum is {minimum}"):
    # The byte tokenizer's size is known from the config; sentencepiece's from the corpus.
    resolve(config, 1) if name == "bytes" else tokenizer_lib.get_tokenizer(config)


def test_hf_tokenizer_matches_transformers_and_round_trips(corpus):
  """The fixture's byte-level BPE: transformers' ids (frozen), lossless decoding, bytes per id,
  and the special ids from tokenizer_config.json (no BOS token there: documents start with EOS)."""
  tokenizer = tokenizer_lib.HFTokenizer(str(HF_FIXTURE))
  text = json.loads((HF_FIXTURE / "text.json").read_text())["text"]
  np.testing.assert_array_equal(tokenizer.encode(text),
                                np.load(HF_FIXTURE / "expected.npz")["text_ids"])
  assert tokenizer.vocab_size == 320 and tokenizer.token_bytes.shape == (320,)
  assert tokenizer.eos_id == tokenizer.bos_id == tokenizer.pad_id == 319
  assert tokenizer.token_bytes[319] == 0
  for text in _texts(corpus):
    ids = tokenizer.encode(text)
    assert ids.dtype == np.int32 and tokenizer.decode(ids) == text
    assert tokenizer.token_bytes[ids].sum() == len(text.encode("utf-8"))
  assert tokenizer.decode([319, *tokenizer.encode("ab"), 319, 400]) == "ab"


def test_hf_tokenizer_errors(config, tmp_path):
  config.data.update(tokenizer="hf", tokenizer_dir=str(tmp_path))
  with pytest.raises(MissingPathError, match=r"data.tokenizer='hf' needs data.tokenizer_dir: a "
                     r"folder with tokenizer.json; got '.*'"):
    resolve(config, 1)
  shutil.copy(HF_FIXTURE / "tokenizer.json", tmp_path)
  (tmp_path / "tokenizer_config.json").write_text("{}")
  with pytest.raises(ConfigError, match=r"tokenizer_config.json names no eos_token"):
    tokenizer_lib.get_tokenizer(config)
  (tmp_path / "tokenizer_config.json").write_text('{"eos_token": "<|im_end|>"}')
  with pytest.raises(ConfigError, match=r"eos_token='<\|im_end\|>' is not in tokenizer.json"):
    tokenizer_lib.get_tokenizer(config)
  shutil.copy(HF_FIXTURE / "tokenizer_config.json", tmp_path)
  config.model.vocab_size = 300
  with pytest.raises(ConfigError, match=r"model.vocab_size=300 is smaller than the 320 ids"):
    tokenizer_lib.get_tokenizer(config)
