"""Tokenizers by `data.tokenizer`: a lossless SentencePiece BPE fit to the corpus, or UTF-8 bytes.

Both reserve ids 0 (padding), 1 (BOS) and 2 (EOS).
"""

import io
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

import ml_collections
import numpy as np
import sentencepiece as spm
from absl import logging
from tqdm import tqdm

from data import storage
from data.sources import Records, document_bytes, load_source
from efficiency.errors import ConfigError

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
# Text the sentencepiece tokenizer trains on, at most: the first documents of the train split
# (stored in hash order, so a fair sample) up to this many UTF-8 bytes.
MAX_TRAINING_BYTES = 64 * 2**20


class Tokenizer(Protocol):
  """What the pipeline, the train loop and the evaluations need from a tokenizer."""

  vocab_size: int  # Ids are in [0, vocab_size).
  pad_id: int
  bos_id: int
  eos_id: int
  token_bytes: np.ndarray  # int32[vocab_size]: UTF-8 bytes each id stands for; 0 for specials.

  def encode(self, text: str) -> np.ndarray:
    """int32 ids of `text`, without BOS or EOS."""

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """The text of `ids`; special ids and ids from vocab_size up decode to nothing."""


class ByteTokenizer:
  """UTF-8 bytes as ids 3..258, after the three special ids."""

  vocab_size = 3 + 256
  pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID
  token_bytes = np.array([0, 0, 0] + [1] * 256, np.int32)
  _offset = 3

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + self._offset

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    ids = np.asarray(ids, np.int64)
    byte_ids = ids[(ids >= self._offset) & (ids < self.vocab_size)] - self._offset
    return byte_ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")


class SentencePieceTokenizer:
  """A SentencePiece model; `vocab_size` is its number of pieces."""

  pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID

  def __init__(self, model_proto: bytes):
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.vocab_size = self._sp.get_piece_size()
    self.token_bytes = np.array([self._piece_bytes(i) for i in range(self.vocab_size)], np.int32)

  def _piece_bytes(self, i: int) -> int:
    if self._sp.is_control(i) or self._sp.is_unknown(i):
      return 0
    if self._sp.is_byte(i):
      return 1
    return len(self._sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._sp.encode(text), np.int32)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    return self._sp.decode([i for i in np.asarray(ids).tolist() if i < self.vocab_size])


def train_sentencepiece(lines: Iterable[str], vocab_size: int) -> bytes:
  """Trains a BPE model that is lossless on source code and returns its serialized proto.

  Losslessness: identity normalization, no whitespace trimming and no dummy prefix, runs of
  spaces may form pieces, and byte fallback covers any rare character. "\\n" is a piece of its
  own, so training on single lines learns exactly the pieces whole documents use. (Known limit:
  U+2581, SentencePiece's space marker, decodes as a space.) The pieces are deterministic.
  """
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # A corpus too small for vocab_size yields fewer pieces.
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        byte_fallback=True,
        user_defined_symbols=["\n"],
        pad_id=PAD_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        unk_id=3,
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
    )
  except RuntimeError as e:
    needed = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(e))
    if needed is None:
      raise
    raise ConfigError(
        f"model.vocab_size={vocab_size} is too small for the sentencepiece tokenizer on this "
        f"corpus; the minimum is {needed.group(1)}"
    ) from e
  return model.getvalue()


def _training_lines(records: Records, max_bytes: int) -> Iterator[str]:
  """The lines of the first documents of `records`, up to `max_bytes` of text."""
  seen = 0
  for record in tqdm(records, desc="Reading tokenizer training text", unit="doc"):
    if seen >= max_bytes:
      return
    text = document_bytes(record)
    seen += len(text)
    yield from text.decode("utf-8", errors="replace").split("\n")


def _sentencepiece(config: ml_collections.ConfigDict) -> Tokenizer:
  """The corpus's sentencepiece tokenizer, trained on its train split on first use and cached."""
  source = load_source(config)
  vocab_size = config.model.vocab_size
  cache_dir = os.path.join(source.cache_dir, "tokenizers")
  path = os.path.join(cache_dir, f"sentencepiece_bpe_{vocab_size}.model")
  if not os.path.exists(path):
    with storage.locked(cache_dir):
      if not os.path.exists(path):
        logging.info("Training a %d-piece sentencepiece BPE tokenizer into %s", vocab_size, path)
        start = time.perf_counter()
        proto = train_sentencepiece(_training_lines(source.train, MAX_TRAINING_BYTES), vocab_size)
        with open(path + ".tmp", "wb") as f:
          f.write(proto)
        os.replace(path + ".tmp", path)
        logging.info("Trained the tokenizer in %.1f s", time.perf_counter() - start)
  with open(path, "rb") as f:
    tokenizer = SentencePieceTokenizer(f.read())
  if tokenizer.vocab_size < vocab_size:
    logging.warning(
        "The corpus yields only %d sentencepiece pieces; model.vocab_size=%d leaves ids unused",
        tokenizer.vocab_size,
        vocab_size,
    )
  return tokenizer


def _bytes(config: ml_collections.ConfigDict) -> Tokenizer:
  """The byte tokenizer (the model's vocabulary holds at least its 259 ids)."""
  del config
  return ByteTokenizer()


TOKENIZERS: dict[str, Callable[[ml_collections.ConfigDict], Tokenizer]] = {
    "sentencepiece": _sentencepiece,
    "bytes": _bytes,
}


def get_tokenizer(config: ml_collections.ConfigDict) -> Tokenizer:
  """The tokenizer named by `data.tokenizer` (one of TOKENIZERS), on the config's corpus."""
  return TOKENIZERS[config.data.tokenizer](config)
