"""Our tokenizers as tokenizer.json: the same ids as sentencepiece / the byte tokenizer on varied
texts (for models of each kind sentencepiece trains), transformers' frozen ids of an exported
sentencepiece run reproduced, and a tokenizer.model-only folder read back."""

import io
import json
import random
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from data.tokenizer import ByteTokenizer, HFTokenizer, SentencePieceTokenizer, train_sentencepiece
from efficiency.errors import ConfigError
from efficiency.hf.tokenizer import (
    SPM_FILE,
    export_tokenizer,
    from_bytes,
    from_sentencepiece,
    sentencepiece_folder,
)
from tests.helpers import ROOT

FIXTURE = ROOT / "tests" / "fixtures" / "hf" / "sentencepiece"
TEXTS = json.loads((FIXTURE / "texts.json").read_text())["texts"]


def _stdlib_texts(start: int, count: int) -> list[str]:
  stdlib = Path(sysconfig.get_paths()["stdlib"])
  paths = sorted(p for p in stdlib.glob("*.py") if 2_000 < p.stat().st_size < 12_000)
  return [p.read_text() for p in paths[start : start + count]]


def _probe_texts() -> list[str]:
  """Unseen code, the fixture's texts, and random strings over a hard alphabet (spaces, tabs,
  newlines, accents, CJK, emoji, U+2581, the special tokens' spellings)."""
  rng = random.Random(0)
  alphabet = [" ", "  ", "\t", "\n", "\r\n", "e", "é", "日", "😀", "\u2581", "<s>", "</s>",
              "<unk>", "def", "_", "0x", "\u00a0", "\x00"]
  randoms = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(60)]
  return [*_stdlib_texts(40, 12), *TEXTS, *randoms]


@pytest.fixture(scope="module")
def training_lines() -> list[str]:
  return [line for text in _stdlib_texts(0, 40) for line in text.split("\n")]


def _trained(lines: list[str], **options) -> bytes:
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model,
                                 vocab_size=600, hard_vocab_limit=False, byte_fallback=True,
                                 minloglevel=2, **options)
  return model.getvalue()


def test_our_sentencepiece_and_bytes_encode_alike(training_lines):
  """The run's own tokenizers (train_sentencepiece's BPE, ByteTokenizer) and their tokenizer.json
  give the same ids on every probe text and decode them alike."""
  sp = SentencePieceTokenizer(train_sentencepiece(training_lines, 700))
  pairs = [(sp, from_sentencepiece(sp.model_proto)), (ByteTokenizer(), from_bytes())]
  for ours, theirs in pairs:
    for text in _probe_texts():
      ids = theirs.encode(text, add_special_tokens=False).ids
      np.testing.assert_array_equal(ids, ours.encode(text), err_msg=repr(text[:60]))
      assert theirs.decode(ids) == ours.decode(ids)


@pytest.mark.parametrize(
    "options",
    [
        dict(model_type="bpe", add_dummy_prefix=True),  # Llama 2 / Mistral style
        dict(model_type="unigram", normalization_rule_name="nmt_nfkc",
             remove_extra_whitespaces=True),  # T5 style
    ],
)
def test_other_sentencepiece_models_encode_alike(training_lines, options):
  """Imported tokenizer.model files: dummy prefix, NFKC rules, whitespace removal, Unigram."""
  proto = _trained(training_lines, **options)
  sp, converted = spm.SentencePieceProcessor(model_proto=proto), from_sentencepiece(proto)
  for text in _probe_texts():
    ids = converted.encode(text, add_special_tokens=False).ids
    assert ids == sp.encode(text), repr(text[:60])
    assert converted.decode(ids) == sp.decode(ids)


def test_export_matches_transformers_frozen_ids(tmp_path):
  """The fixture is an exported run's folder as transformers read it: our tokenizer.json written
  anew from its tokenizer.model is the same file, and both our tokenizers give its ids."""
  expected = np.load(FIXTURE / "expected.npz")
  sp = SentencePieceTokenizer((FIXTURE / SPM_FILE).read_bytes())
  assert export_tokenizer(sp, tmp_path, 2048) == "sentencepiece"
  for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", SPM_FILE):
    assert (tmp_path / name).read_bytes() == (FIXTURE / name).read_bytes(), name
  hf = HFTokenizer(str(tmp_path))
  assert (hf.bos_id, hf.eos_id, hf.pad_id, hf.vocab_size) == (1, 2, 0, sp.vocab_size)
  np.testing.assert_array_equal(hf.token_bytes, sp.token_bytes)
  offsets = expected["offsets"]
  for k, text in enumerate(TEXTS):
    ids = expected["ids"][offsets[k] : offsets[k + 1]]
    np.testing.assert_array_equal(sp.encode(text), ids, err_msg=repr(text))
    np.testing.assert_array_equal(hf.encode(text), ids, err_msg=repr(text))
    assert hf.decode(ids) == sp.decode(ids) == str(expected["decoded"][k])
  np.testing.assert_array_equal(expected["bos_ids"], [1, *sp.encode(TEXTS[0])])


def test_bytes_export_is_the_byte_tokenizer(tmp_path):
  assert export_tokenizer(ByteTokenizer(), tmp_path, 2048) == "bytes"
  hf, ours = HFTokenizer(str(tmp_path)), ByteTokenizer()
  assert (hf.bos_id, hf.eos_id, hf.pad_id, hf.vocab_size) == (1, 2, 0, 259)
  np.testing.assert_array_equal(hf.token_bytes, ours.token_bytes)
  for text in TEXTS:
    np.testing.assert_array_equal(hf.encode(text), ours.encode(text))
    assert hf.decode(hf.encode(text)) == text


def test_tokenizer_model_folder(tmp_path):
  """A sentencepiece tokenizer.model alone becomes the same tokenizer.json folder; a vocabulary
  that is not the checkpoint's is one line."""
  sentencepiece_folder(FIXTURE / SPM_FILE, tmp_path, 384)
  assert (tmp_path / "tokenizer.json").read_bytes() == (FIXTURE / "tokenizer.json").read_bytes()
  with pytest.raises(ConfigError, match=r"tokenizer.model has 384 pieces but the checkpoint's "
                     r"vocab_size=400 embedding rows"):
    sentencepiece_folder(FIXTURE / SPM_FILE, tmp_path / "other", 400)
