"""Tokenizers by `data.tokenizer`: a lossless SentencePiece BPE fit to the corpus, UTF-8 bytes,
or a Hugging Face `tokenizer.json` (an imported model's own vocabulary).

The first two reserve ids 0 (padding), 1 (BOS) and 2 (EOS); `hf` takes its special ids from the
`tokenizer_config.json` beside its `tokenizer.json`.
"""

import io
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

import ml_collections
import numpy as np
import sentencepiece as spm
import tokenizers
from absl import logging
from tqdm import tqdm

from data import storage
from data.sources import Records, document_bytes, document_text, load_source
from efficiency.errors import ConfigError, MissingPathError

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
    self.model_proto = model_proto
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


class HFTokenizer:
  """A Hugging Face tokenizer folder: `tokenizer.json` (read by the `tokenizers` library) and
  `tokenizer_config.json`, whose `eos_token` (required), `bos_token` and `pad_token` name the
  special ids (and `split_special_tokens` whether text spelling them is encoded as text).
  Without a BOS token, documents start with EOS (the separator Qwen2 trains with); without a
  padding token, padding is EOS (padded positions carry weight 0 either way)."""

  FILE = "tokenizer.json"
  SETTINGS = "tokenizer_config.json"

  def __init__(self, folder: str):
    self.folder = folder
    path = os.path.join(folder, self.FILE)
    if not os.path.isfile(path):
      raise MissingPathError(f"data.tokenizer_dir={folder!r} has no {self.FILE}")
    try:
      self._tokenizer = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises bare Exceptions on malformed files.
      raise ConfigError(f"{path} is not a tokenizers file: {e}") from e
    self.vocab_size = max(self._tokenizer.get_vocab(with_added_tokens=True).values()) + 1
    settings_path = os.path.join(folder, self.SETTINGS)
    settings = {}
    if os.path.isfile(settings_path):
      with open(settings_path) as f:
        settings = json.load(f)
    self.eos_id = self._special(settings, "eos_token", settings_path)
    if self.eos_id is None:
      raise ConfigError(f"{settings_path} names no eos_token; add one")
    bos_id, pad_id = (self._special(settings, k, settings_path) for k in ("bos_token", "pad_token"))
    self.bos_id = self.eos_id if bos_id is None else bos_id
    self.pad_id = self.eos_id if pad_id is None else pad_id
    # transformers' `split_special_tokens`: special tokens spelled in text are encoded as text.
    self._tokenizer.encode_special_tokens = bool(settings.get("split_special_tokens", False))
    self.token_bytes = self._token_bytes()

  def _special(self, settings: dict, key: str, path: str) -> int | None:
    token = settings.get(key)
    if isinstance(token, dict):
      token = token.get("content")
    if token is None:
      return None
    token_id = self._tokenizer.token_to_id(token)
    if token_id is None:
      raise ConfigError(f"{path}: {key}={token!r} is not in {self.FILE}")
    return token_id

  def _token_bytes(self) -> np.ndarray:
    """UTF-8 bytes per id: a byte-level vocabulary's tokens spell one byte per character;
    otherwise (SentencePiece-style) a <0xNN> piece is one byte and U+2581 is a space."""
    decoder = (json.loads(self._tokenizer.to_str()).get("decoder") or {}).get("type")
    special = {i for i, t in self._tokenizer.get_added_tokens_decoder().items() if t.special}
    counts = np.zeros(self.vocab_size, np.int32)
    for token, i in self._tokenizer.get_vocab(with_added_tokens=True).items():
      if i in special:
        continue
      if decoder == "ByteLevel":
        counts[i] = len(token)
      elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
        counts[i] = 1
      else:
        counts[i] = len(token.replace("\u2581", " ").encode("utf-8"))
    return counts

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._tokenizer.encode(text, add_special_tokens=False).ids, np.int32)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    ids = [i for i in np.asarray(ids).tolist() if 0 <= i < self.vocab_size]
    return self._tokenizer.decode(ids, skip_special_tokens=True)


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


def _training_lines(records: Records, max_bytes: int, max_doc_bytes: int) -> Iterator[str]:
  """The lines of the first usable documents of `records` (those data preparation keeps), up
  to `max_bytes` of text."""
  seen = 0
  for record in tqdm(records, desc="Reading tokenizer training text", unit="doc"):
    if seen >= max_bytes:
      return
    text, _ = document_text(document_bytes(record), max_doc_bytes)
    if text is not None:
      seen += len(text)
      yield from text.split("\n")


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
        lines = list(_training_lines(source.train, MAX_TRAINING_BYTES, config.data.max_doc_bytes))
        if not lines:
          where = f", data.text_glob={config.data.text_glob!r}" if config.data.text_glob else ""
          raise ConfigError(
              f"data.name={config.data.name!r}{where}: no usable text to train the tokenizer on; "
              f"the train split's {len(source.train)} documents are all empty, binary, invalid "
              "UTF-8 or longer than data.max_doc_bytes"
          )
        proto = train_sentencepiece(lines, vocab_size)
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


def _hf(config: ml_collections.ConfigDict) -> Tokenizer:
  """The Hugging Face tokenizer in `data.tokenizer_dir`, which must fit the model's vocabulary."""
  tokenizer = HFTokenizer(config.data.tokenizer_dir)
  if tokenizer.vocab_size > config.model.vocab_size:
    raise ConfigError(
        f"model.vocab_size={config.model.vocab_size} is smaller than the {tokenizer.vocab_size} "
        f"ids of the tokenizer in data.tokenizer_dir={config.data.tokenizer_dir!r}"
    )
  return tokenizer


TOKENIZERS: dict[str, Callable[[ml_collections.ConfigDict], Tokenizer]] = {
    "sentencepiece": _sentencepiece,
    "bytes": _bytes,
    "hf": _hf,
}


def get_tokenizer(config: ml_collections.ConfigDict) -> Tokenizer:
  """The tokenizer named by `data.tokenizer` (one of TOKENIZERS), on the config's corpus."""
  return TOKENIZERS[config.data.tokenizer](config)
