"""Length bounds: keeps documents of `data.filter.min_tokens` to `max_tokens` tokens."""

import numpy as np

from data.filters.documents import Documents


def keep(docs: Documents) -> np.ndarray:
  params = docs.config.data.filter
  tokens = docs.num_tokens()
  return (tokens >= params.min_tokens) & (tokens <= params.max_tokens)
