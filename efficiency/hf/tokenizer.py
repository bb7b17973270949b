"""Our tokenizers as Hugging Face `tokenizer.json` folders, and a sentencepiece `tokenizer.model`
into one: built with the `tokenizers` library so that they encode every text to the same ids.

A sentencepiece model becomes its own algorithm in `tokenizers`: BPE (every split of a piece
into two pieces is a merge, ranked by the piece's score, as sentencepiece merges the best-scoring
adjacent pair) or Unigram (the pieces and scores), with byte fallback, its normalization (the
precompiled rules, extra-whitespace removal, the dummy prefix, spaces as U+2581) and no
pre-tokenizer (sentencepiece segments the whole text; whitespace-only pieces stay whole). Control
and unknown pieces are special tokens that text never spells (`encode_special_tokens`: a literal
"<s>" is encoded as text, as sentencepiece does); user-defined pieces are matched first.
The byte tokenizer is the same with no merges: 256 byte pieces after the three special ids.
"""

import json
from pathlib import Path

import tokenizers
from sentencepiece import sentencepiece_model_pb2 as spm_pb2
from tokenizers import AddedToken, decoders, normalizers, processors

from data.tokenizer import (
  BOS_ID,
  EOS_ID,
  PAD_ID,
  ByteTokenizer,
  HFTokenizer,
  SentencePieceTokenizer,
  Tokenizer,
)
from efficiency.errors import ConfigError
from efficiency.hf.config import MIN_CONTEXT

Piece = spm_pb2.ModelProto.SentencePiece
SPM_FILE = "tokenizer.model"
SPECIAL_MAP = "special_tokens_map.json"
SPACE = "\u2581"
BYTE_SPECIALS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2 of ByteTokenizer
BPE, UNIGRAM = spm_pb2.TrainerSpec.BPE, spm_pb2.TrainerSpec.UNIGRAM
MATCHED = (Piece.NORMAL, Piece.USER_DEFINED)  # the pieces sentencepiece matches in text
UNMATCHED_SCORE = -1e9


def _byte_piece(b: int) -> str:
  return f"<0x{b:02X}>"


def _bpe_merges(pieces: list[Piece], vocab: dict[str, int]) -> list[tuple[str, str]]:
  """Every split of a mergeable piece into two pieces of the vocabulary, best score first."""
  order = sorted(
      (i for i, p in enumerate(pieces) if p.type in MATCHED and len(p.piece) > 1),
      key=lambda i: (-pieces[i].score, i),
  )
  merges = []
  for i in order:
    text = pieces[i].piece
    merges += [(text[:k], text[k:]) for k in range(1, len(text))
               if text[:k] in vocab and text[k:] in vocab]
  return merges


def _normalizer(spec: spm_pb2.NormalizerSpec) -> normalizers.Normalizer | None:
  """sentencepiece's normalization in its order: rules, whitespace, dummy prefix, escaping."""
  steps = []
  if spec.precompiled_charsmap:
    steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
  if spec.remove_extra_whitespaces:
    steps += [normalizers.Replace(tokenizers.Regex(" {2,}"), " "),
              normalizers.Replace(tokenizers.Regex(r"\A +| +\z"), "")]
  if spec.add_dummy_prefix:
    steps.append(normalizers.Prepend(" "))
  if spec.escape_whitespaces:
    steps.append(normalizers.Replace(" ", SPACE))
  return normalizers.Sequence(steps) if steps else None


def from_sentencepiece(model_proto: bytes) -> tokenizers.Tokenizer:
  """The `tokenizers` equivalent of a serialized sentencepiece BPE or Unigram model."""
  proto = spm_pb2.ModelProto()
  proto.ParseFromString(model_proto)
  pieces = list(proto.pieces)
  vocab = {p.piece: i for i, p in enumerate(pieces)}
  unk = next((p.piece for p in pieces if p.type == Piece.UNKNOWN), None)
  byte_fallback = proto.trainer_spec.byte_fallback
  kind = proto.trainer_spec.model_type
  if kind == BPE:
    model = tokenizers.models.BPE(
        vocab=vocab, merges=_bpe_merges(pieces, vocab), unk_token=unk, fuse_unk=True,
        byte_fallback=byte_fallback,
    )
  elif kind == UNIGRAM:
    # sentencepiece never matches control, unknown or byte pieces in text; Unigram would.
    scores = [(p.piece, p.score if p.type in MATCHED else UNMATCHED_SCORE) for p in pieces]
    model = tokenizers.models.Unigram(scores, vocab.get(unk), byte_fallback=byte_fallback)
  else:
    name = spm_pb2.TrainerSpec.ModelType.Name(kind)
    raise ConfigError(f"sentencepiece model_type={name} is not supported; valid choices: BPE, "
                      "UNIGRAM")
  tokenizer = tokenizers.Tokenizer(model)
  spec = proto.normalizer_spec
  if (normalizer := _normalizer(spec)) is not None:
    tokenizer.normalizer = normalizer
  steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
  if spec.add_dummy_prefix:
    steps.append(decoders.Strip(" ", 1, 0))
  tokenizer.decoder = decoders.Sequence(steps)
  tokenizer.add_tokens([AddedToken(p.piece, normalized=True, special=False)
                        for p in pieces if p.type == Piece.USER_DEFINED])
  specials = [p.piece for p in pieces if p.type in (Piece.CONTROL, Piece.UNKNOWN)]
  tokenizer.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in specials])
  tokenizer.encode_special_tokens = True
  return tokenizer


def from_bytes() -> tokenizers.Tokenizer:
  """The `tokenizers` equivalent of ByteTokenizer: specials 0-2, then <0x00>..<0xFF>."""
  vocab = {s: i for i, s in enumerate(BYTE_SPECIALS)}
  vocab.update({_byte_piece(b): ByteTokenizer._offset + b for b in range(256)})
  tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[],
                                                         byte_fallback=True))
  tokenizer.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
  tokenizer.add_special_tokens([AddedToken(s, normalized=False, special=True)
                                for s in BYTE_SPECIALS])
  tokenizer.encode_special_tokens = True
  return tokenizer


def write_folder(tokenizer: tokenizers.Tokenizer, folder: Path, bos_id: int, eos_id: int,
                 pad_id: int, max_length: int) -> None:
  """tokenizer.json (BOS prepended when special tokens are added, as our documents start),
  tokenizer_config.json and special_tokens_map.json, as `transformers.AutoTokenizer` loads."""
  bos, eos, pad = (tokenizer.id_to_token(i) for i in (bos_id, eos_id, pad_id))
  tokenizer.post_processor = processors.TemplateProcessing(
      single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
  )
  tokenizer.save(str(folder / HFTokenizer.FILE))
  names = {"bos_token": bos, "eos_token": eos, "pad_token": pad}
  unk = tokenizer.model.unk_token if isinstance(tokenizer.model, tokenizers.models.BPE) else None
  if unk:
    names["unk_token"] = unk
  settings = {
      "tokenizer_class": "PreTrainedTokenizerFast",
      **names,
      "add_bos_token": True,
      "add_eos_token": False,
      "split_special_tokens": True,
      "clean_up_tokenization_spaces": False,
      "model_max_length": max_length,
  }
  (folder / HFTokenizer.SETTINGS).write_text(json.dumps(settings, indent=2) + "\n")
  (folder / SPECIAL_MAP).write_text(json.dumps(names, indent=2) + "\n")


def export_tokenizer(tokenizer: Tokenizer, folder: Path, max_length: int) -> str:
  """Writes `tokenizer` (one of data.tokenizer's) into `folder` (a sentencepiece one's model too,
  as tokenizer.model); returns its kind."""
  if isinstance(tokenizer, SentencePieceTokenizer):
    converted, kind = from_sentencepiece(tokenizer.model_proto), "sentencepiece"
    (folder / SPM_FILE).write_bytes(tokenizer.model_proto)  # for sentencepiece's own readers
  elif isinstance(tokenizer, ByteTokenizer):
    converted, kind = from_bytes(), "bytes"
  else:
    raise ConfigError(f"cannot export a {type(tokenizer).__name__} as a tokenizer.json")
  write_folder(converted, folder, BOS_ID, EOS_ID, PAD_ID, max_length)
  return kind


def sentencepiece_folder(model_file: Path, folder: Path, vocab_size: int) -> None:
  """A sentencepiece `tokenizer.model` as a tokenizer.json folder in `folder`; its pieces must be
  the checkpoint's `vocab_size` embedding rows."""
  tokenizer = SentencePieceTokenizer(model_file.read_bytes())
  if tokenizer.vocab_size != vocab_size:
    raise ConfigError(f"{model_file} has {tokenizer.vocab_size} pieces but the checkpoint's "
                      f"vocab_size={vocab_size} embedding rows; is it the model's tokenizer?")
  proto = spm_pb2.ModelProto()
  proto.ParseFromString(tokenizer.model_proto)
  spec = proto.trainer_spec
  ids = {"bos_id": spec.bos_id, "eos_id": spec.eos_id, "pad_id": spec.pad_id}
  if ids["eos_id"] < 0:
    raise ConfigError(f"{model_file} has no EOS piece (eos_id={ids['eos_id']}); add one")
  ids = {k: ids["eos_id"] if v < 0 else v for k, v in ids.items()}
  write_folder(from_sentencepiece(tokenizer.model_proto), folder, max_length=MIN_CONTEXT, **ids)
