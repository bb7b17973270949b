"""Exact deduplication: keeps the first of documents with identical text."""

import hashlib

import numpy as np

from data.filters.documents import Documents


def keep(docs: Documents) -> np.ndarray:
  seen: set[bytes] = set()
  mask = np.zeros(len(docs.texts), bool)
  for i, text in enumerate(docs.texts):
    digest = hashlib.sha1(text.encode("utf-8")).digest()
    mask[i] = digest not in seen
    seen.add(digest)
  return mask
