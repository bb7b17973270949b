"""Difficulty scores by `data.curriculum.difficulty`: higher is harder.

Adding a score means adding one function and one line to DIFFICULTIES.
"""

import zlib
from collections.abc import Callable

import numpy as np

from data.filters.documents import Documents
from efficiency.errors import ConfigError


def length(docs: Documents) -> np.ndarray:
  """Tokens in the document."""
  return docs.num_tokens().astype(np.float64)


def compression(docs: Documents) -> np.ndarray:
  """zlib-compressed over raw UTF-8 size: repetitive text compresses well and is easy."""
  raw = [t.encode("utf-8") for t in docs.texts]
  return np.array([len(zlib.compress(b, 6)) / max(len(b), 1) for b in raw])


def reference_loss(docs: Documents) -> np.ndarray:
  """Mean token loss under the reference model of `data.reference_workdir`."""
  return docs.reference_losses()


def field(docs: Documents) -> np.ndarray:
  """A precomputed numeric field of the records, named by `data.curriculum.field`."""
  name = docs.config.data.curriculum.field
  first = docs.records[int(docs.indices[0])]
  if name not in first:
    raise ConfigError(
        f"data.curriculum.field={name!r} is not a field of the records; valid choices: "
        f"{', '.join(sorted(first))}"
    )
  return np.array([float(docs.records[int(i)][name]) for i in docs.indices])


DIFFICULTIES: dict[str, Callable[[Documents], np.ndarray]] = {
    "length": length,
    "compression": compression,
    "reference_loss": reference_loss,
    "field": field,
}

