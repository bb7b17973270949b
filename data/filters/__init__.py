"""Document filters by name (`data.filters`), applied in order when data is prepared.

A filter maps the surviving `Documents` to a boolean keep mask; its parameters live in
`data.filter.*`. Adding a filter means adding one file and one line to FILTERS.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np


@dataclasses.dataclass(frozen=True)
class Documents:
  """Decoded documents of one split, with their token ids and where they come from."""

  texts: list[str]
  tokens: list[np.ndarray]
  indices: np.ndarray  # int64[N]: each document's record index in the split
  records: Sequence[Mapping[str, Any]]  # the split's records (for precomputed fields)
  config: ml_collections.ConfigDict

  def subset(self, keep: np.ndarray) -> "Documents":
    """The documents where the boolean mask `keep` is true."""
    where = np.flatnonzero(keep)
    return dataclasses.replace(
        self,
        texts=[self.texts[i] for i in where],
        tokens=[self.tokens[i] for i in where],
        indices=self.indices[where],
    )

  def num_tokens(self) -> np.ndarray:
    return np.array([len(t) for t in self.tokens], np.int64)


Filter = Callable[[Documents], np.ndarray]


def _registry() -> dict[str, Filter]:
  from data.filters import exact_dedup, length, near_dup, perplexity, quality

  return {
      "length": length.keep,
      "exact_dedup": exact_dedup.keep,
      "near_dup": near_dup.keep,
      "quality": quality.keep,
      "perplexity": perplexity.keep,
  }


FILTERS: dict[str, Filter] = _registry()


def parse_chain(spec: str) -> list[str]:
  """Filter names from a comma-separated `data.filters`, checked against FILTERS."""
  names = [name.strip() for name in spec.split(",") if name.strip()]
  for name in names:
    if name not in FILTERS:
      raise ValueError(
          f"data.filters: {name!r} is unknown; valid choices: {', '.join(sorted(FILTERS))}"
      )
  return names


def apply_chain(docs: Documents, names: list[str]) -> tuple[Documents, list[dict]]:
  """The documents every filter keeps, and each filter's kept/dropped documents and tokens."""
  stats = []
  for name in names:
    keep = np.asarray(FILTERS[name](docs), bool)
    tokens = docs.num_tokens()
    stats.append({
        "name": name,
        "kept_documents": int(keep.sum()),
        "dropped_documents": int((~keep).sum()),
        "kept_tokens": int(tokens[keep].sum()),
        "dropped_tokens": int(tokens[~keep].sum()),
    })
    docs = docs.subset(keep)
    if not docs.texts:
      raise ValueError(
          f"data.filters={','.join(names)!r} drops every document (the last one left, {name!r}, "
          f"dropped {stats[-1]['dropped_documents']}); loosen data.filter.* or remove a filter"
      )
  return docs, stats
