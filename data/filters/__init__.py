"""Document filters by name (`data.filters`), applied in order when data is prepared.

A filter maps the surviving `Documents` to a boolean keep mask; its parameters live in
`data.filter.*`. Adding a filter means adding one file and one line to FILTERS.
"""

import numpy as np

from data.filters import exact_dedup, length, metadata, near_dup, perplexity, quality
from data.filters.documents import Documents, Filter
from efficiency.errors import ConfigError

FILTERS: dict[str, Filter] = {
    "length": length.keep,
    "exact_dedup": exact_dedup.keep,
    "near_dup": near_dup.keep,
    "quality": quality.keep,
    "perplexity": perplexity.keep,
    "metadata": metadata.keep,
}

# Filters that score documents with the reference model of `data.reference_workdir`.
REFERENCE_FILTERS = ("perplexity",)


def parse_chain(spec: str) -> list[str]:
  """Filter names from a comma-separated `data.filters` (names of FILTERS)."""
  return [name.strip() for name in spec.split(",") if name.strip()]


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
      raise ConfigError(
          f"data.filters={','.join(names)!r} drops every document (the last one left, {name!r}, "
          f"dropped {stats[-1]['dropped_documents']}); loosen data.filter.* or remove a filter"
      )
  return docs, stats
