"""Near-duplicate removal: MinHash signatures of word 5-gram shingles, candidates by LSH bands.

A document is dropped when an earlier kept document shares an LSH band with it and their
signatures agree in at least `data.filter.near_dup_threshold` of positions (an estimate of the
Jaccard similarity of their shingle sets). `near_dup_perms` hash functions form
`near_dup_bands` bands; the hash functions are fixed, so the result is deterministic.
"""

import re
import zlib

import numpy as np

from data.filters.documents import Documents

SHINGLE_WORDS = 5
_PRIME = np.uint64(4294967291)  # the largest prime below 2**32
_WORD = re.compile(r"\w+")


def shingles(text: str) -> np.ndarray:
  """uint64 CRC32 hashes of the document's word 5-grams (the whole text if shorter)."""
  words = _WORD.findall(text)
  grams = [" ".join(words[i : i + SHINGLE_WORDS]) for i in range(max(1, len(words) - 4))]
  return np.array(sorted({zlib.crc32(g.encode("utf-8")) for g in grams}), np.uint64)


def signatures(texts: list[str], num_perms: int) -> np.ndarray:
  """uint64[N, num_perms] MinHash signatures, from universal hashes (a x + b) mod p."""
  rng = np.random.default_rng(0)
  a = rng.integers(1, int(_PRIME), num_perms, dtype=np.uint64)
  b = rng.integers(0, int(_PRIME), num_perms, dtype=np.uint64)
  out = np.empty((len(texts), num_perms), np.uint64)
  for i, text in enumerate(texts):
    x = shingles(text)[:, None] % _PRIME
    out[i] = ((x * a[None, :] % _PRIME + b[None, :]) % _PRIME).min(axis=0)
  return out


def keep(docs: Documents) -> np.ndarray:
  params = docs.config.data.filter
  perms, bands = params.near_dup_perms, params.near_dup_bands
  sig = signatures(docs.texts, perms)
  buckets: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]
  rows = perms // bands
  mask = np.ones(len(docs.texts), bool)
  for i in range(len(docs.texts)):
    keys = [sig[i, band * rows : (band + 1) * rows].tobytes() for band in range(bands)]
    candidates = {j for band, key in enumerate(keys) for j in buckets[band].get(key, ())}
    if any(np.mean(sig[i] == sig[j]) >= params.near_dup_threshold for j in candidates):
      mask[i] = False
      continue
    for band, key in enumerate(keys):
      buckets[band].setdefault(key, []).append(i)
  return mask
