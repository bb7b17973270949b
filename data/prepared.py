"""Prepared data: bad documents dropped, filters applied, difficulty scored; cached and reported.

`prepare(config, tokenizer, scorer)` reads both splits once, tokenizes them and computes:
- the train documents that survive bad-data checks (empty, invalid UTF-8, longer than
  `data.max_doc_bytes`) and the `data.filters` chain, with their token counts;
- their curriculum difficulty scores (if `data.curriculum.difficulty` is not "none");
- the validation documents that survive the bad-data checks (validation is never filtered, so
  eval losses compare across filter setups);
- the data report (see `data.prepare`).
A mixture (`data.mixture`) prepares each source on its own, with its own settings and filters and
the mixture's tokenizer, and reports each under `mixture` besides the totals.
The result is cached under the corpus's cache dir, keyed by everything it depends on, so
`python -m data.prepare` and `train.py` share one computation and train on the same data. The
perplexity filter and the reference-loss difficulty score documents with the `scorer` the caller
gives (a reference model; data never loads one).
"""

import collections
import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from data import filters, mixture, storage
from data.curriculum import difficulty
from data.filters.documents import Scorer
from data.sources import BAD_KINDS, Records, Source, document_bytes, document_text, load_source
from data.tokenizer import Tokenizer
from efficiency.errors import ConfigError

VERSION = 1  # bump when what is cached changes


class Subset(Sequence):
  """The records of `records` at `indices`, in that order, read on demand."""

  def __init__(self, records: Records, indices: np.ndarray):
    self._records = records
    self._indices = np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, i: int) -> Mapping[str, Any]:
    return self._records[int(self._indices[i])]


@dataclasses.dataclass(frozen=True)
class Prepared:
  """Kept record indices per split, train token counts and scores, and the report."""

  train_N: np.ndarray  # int64 record indices of kept train documents
  train_tokens_N: np.ndarray  # int64 tokens of each (without BOS/EOS)
  scores_N: np.ndarray | None  # float64 difficulty of each, or None without a curriculum
  validation_M: np.ndarray  # int64 record indices of kept validation documents
  report: dict
  # A mixture's sources by label (the arrays above then concatenate theirs, each indexing its
  # own source's records); None for a single source.
  sources: dict[str, "Prepared"] | None = None


def uses_reference(config: ml_collections.ConfigDict) -> bool:
  """Whether preparing `config`'s data scores documents with the reference model."""
  chain = filters.parse_chain(config.data.filters)
  return bool(set(chain) & set(filters.REFERENCE_FILTERS)) or (
      config.data.curriculum.difficulty == "reference_loss"
  )


def cache_key(config: ml_collections.ConfigDict, scorer: Scorer | None = None) -> str:
  """A hash of every setting the prepared data depends on (the reference model's by its key)."""
  d, c = config.data, config.data.curriculum
  chain = filters.parse_chain(d.filters)
  key = {
      "version": VERSION,
      "tokenizer": d.tokenizer,
      "vocab_size": config.model.vocab_size,
      "max_doc_bytes": d.max_doc_bytes,
      "filters": chain,
      "filter": d.filter.to_dict(),
      "difficulty": c.difficulty,
      "field": c.field if c.difficulty == "field" else "",
      "reference": scorer.key if uses_reference(config) and scorer is not None else None,
  }
  for field in ("tokenizer_from", "tokenizer_dir", "tokenizer_corpus"):  # Whose vocabulary, when
    # not the corpus's own (tokenizer_corpus: the mixture a source's tokenizer was trained on).
    if d.get(field):
      key[field] = d[field]
  return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def _read(
    records: Records, split: str, tokenizer: Tokenizer, max_bytes: int, progress: bool
) -> tuple[list[int], list[str], list[np.ndarray], dict]:
  """Decoded, tokenized documents of a split, skipping (and counting) bad ones."""
  bad = collections.Counter()
  indices, texts, tokens = [], [], []
  for i in tqdm(range(len(records)), desc=f"Reading {split}", unit="doc", disable=not progress):
    text, kind = document_text(document_bytes(records[i]), max_bytes)
    if text is None:
      bad[kind] += 1
      continue
    indices.append(i)
    texts.append(text)
    tokens.append(tokenizer.encode(text))
  counts = {k: bad[k] for k in BAD_KINDS}
  return indices, texts, tokens, counts


def _split_totals(texts: list[str], tokens_N: np.ndarray) -> dict:
  return {
      "documents": len(texts),
      "tokens": int(tokens_N.sum()),
      "bytes": sum(len(t.encode("utf-8")) for t in texts),
  }


def packing_report(tokens_N: np.ndarray, seq_len: int) -> dict:
  """Rows, padding and efficiency of packing one epoch (each document adds BOS/EOS once)."""
  positions = int((tokens_N + 1).sum())
  rows = math.ceil(positions / seq_len)
  return {
      "seq_len": seq_len,
      "rows_per_epoch": rows,
      "padding_positions": rows * seq_len - positions,
      "efficiency": positions / (rows * seq_len),
  }


def _distribution(scores: np.ndarray) -> dict:
  q = np.percentile(scores, [0, 10, 50, 90, 100])
  return {
      "mean": float(scores.mean()), "min": float(q[0]), "p10": float(q[1]),
      "p50": float(q[2]), "p90": float(q[3]), "max": float(q[4]),
  }


def _compute(
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    source: Source,
    scorer: Scorer | None,
    progress: bool,
) -> Prepared:
  d = config.data
  chain = filters.parse_chain(d.filters)
  read = lambda split, records: _read(records, split, tokenizer, d.max_doc_bytes, progress)
  train_idx, texts, tokens, train_bad = read("train", source.train)
  valid_idx, valid_texts, valid_tokens, valid_bad = read("validation", source.validation)
  for split, kept, bad in (("train", train_idx, train_bad), ("validation", valid_idx, valid_bad)):
    if not kept:
      counts = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in bad.items() if n)
      raise ConfigError(
          f"the {split} split of data.name={d.name!r} has no usable documents ({counts or 'none'}"
          f"; data.max_doc_bytes={d.max_doc_bytes}); add text files"
      )
  valid_tokens_total = sum(len(t) for t in valid_tokens)
  if valid_tokens_total < config.seq_len * 2:
    logging.warning(
        "The validation split holds only %d tokens in %d documents: eval_loss will be noisy; "
        "raise data.validation_percent or add files.", valid_tokens_total, len(valid_idx),
    )
  docs = filters.Documents(
      texts, tokens, np.array(train_idx, np.int64), source.train, config, scorer
  )
  before = docs.num_tokens()
  docs, filter_stats = filters.apply_chain(docs, chain)
  tokens_N = docs.num_tokens()
  scores_N = None
  if d.curriculum.difficulty != "none":
    scores_N = np.asarray(difficulty.DIFFICULTIES[d.curriculum.difficulty](docs), np.float64)
  valid_tokens_M = np.array([len(t) for t in valid_tokens], np.int64)
  report = {
      "source": d.name,
      **source.report,
      "tokenizer": {"name": d.tokenizer, "vocab_size": tokenizer.vocab_size},
      "bad_documents": {"train": train_bad, "validation": valid_bad},
      "filters": filter_stats,
      "splits": {
          "train_before_filters": _split_totals(texts, before),
          "train": _split_totals(docs.texts, tokens_N),
          "validation": _split_totals(valid_texts, valid_tokens_M),
      },
      "curriculum": None
      if scores_N is None
      else {"difficulty": d.curriculum.difficulty, "scores": _distribution(scores_N)},
  }
  train = report["splits"]["train"]
  report["bytes_per_token"] = train["bytes"] / max(train["tokens"], 1)
  report["packing"] = packing_report(tokens_N, config.seq_len)
  return Prepared(docs.indices, tokens_N, scores_N, np.array(valid_idx, np.int64), report)


def prepare(
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    scorer: Scorer | None = None,
    progress: bool = False,
) -> Prepared:
  """The prepared data of `config`, computed once (under a lock) and then read from the cache.

  `scorer` is the reference model, needed when `uses_reference(config)`.
  """
  if uses_reference(config) and scorer is None:
    raise ValueError("preparing data with the perplexity filter or reference_loss needs a scorer")
  source = load_source(config)
  if mixture.is_mixture(config):
    return _prepare_mixture(config, tokenizer, source, scorer, progress)
  directory = os.path.join(source.cache_dir, "prepared", cache_key(config, scorer))
  path = os.path.join(directory, "prepared.npz")
  if not os.path.exists(path):
    with storage.locked(directory):
      if not os.path.exists(path):
        prepared = _compute(config, tokenizer, source, scorer, progress)
        arrays = dataclasses.asdict(prepared)
        report = arrays.pop("report")
        if arrays["scores_N"] is None:
          arrays.pop("scores_N")
        with open(os.path.join(directory, "report.json"), "w") as f:
          json.dump(report, f, indent=2)
        np.savez(path + ".tmp.npz", **arrays)
        os.replace(path + ".tmp.npz", path)
  with np.load(path) as arrays, open(os.path.join(directory, "report.json")) as f:
    report = json.load(f)
    report["packing"] = packing_report(arrays["train_tokens_N"], config.seq_len)
    return Prepared(
        train_N=arrays["train_N"],
        train_tokens_N=arrays["train_tokens_N"],
        scores_N=arrays["scores_N"] if "scores_N" in arrays else None,
        validation_M=arrays["validation_M"],
        report=report,
    )


def _prepare_mixture(
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    source: Source,
    scorer: Scorer | None,
    progress: bool,
) -> Prepared:
  """Each source of the mixture prepared alone (cached like any source, keyed also by the
  mixture the tokenizer came from), and a report of the totals with each source's under
  `mixture`."""
  parts = {}
  for label, sub in mixture.source_configs(config).items():
    sub.data.tokenizer_corpus = source.cache_dir
    parts[label] = prepare(sub, tokenizer, scorer, progress)
  cat = lambda name: np.concatenate([getattr(p, name) for p in parts.values()])
  splits = {
      split: {
          total: sum(p.report["splits"][split][total] for p in parts.values())
          for total in ("documents", "tokens", "bytes")
      }
      for split in ("train_before_filters", "train", "validation")
  }
  weights = dict(zip(parts, mixture.weights(config).tolist(), strict=True))
  train_tokens_N = cat("train_tokens_N")
  report = {
      "source": "mixture",
      "tokenizer": {"name": config.data.tokenizer, "vocab_size": tokenizer.vocab_size},
      "mixture": {label: {"weight": weights[label], **p.report} for label, p in parts.items()},
      "splits": splits,
      "bytes_per_token": splits["train"]["bytes"] / max(splits["train"]["tokens"], 1),
      "packing": packing_report(train_tokens_N, config.seq_len),
      "curriculum": None,
  }
  return Prepared(cat("train_N"), train_tokens_N, None, cat("validation_M"), report, parts)
