"""The documents filters and difficulty scores see, and the reference scorer some of them use."""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import ml_collections
import numpy as np


class Scorer(Protocol):
  """Per-document mean token losses under a reference model. The caller supplies it (data never
  loads a model); `key` identifies the model in the prepared-data cache key."""

  key: list

  def __call__(self, texts: list[str]) -> np.ndarray:
    """float64[N]: each text's mean next-token loss (nats)."""


@dataclasses.dataclass(frozen=True)
class Documents:
  """Decoded documents of one split, with their token ids and where they come from."""

  texts: list[str]
  tokens: list[np.ndarray]
  indices: np.ndarray  # int64[N]: each document's record index in the split
  records: Sequence[Mapping[str, Any]]  # the split's records (for precomputed fields)
  config: ml_collections.ConfigDict
  scorer: Scorer | None = None  # the reference model, for filters and difficulties that need it

  def reference_losses(self) -> np.ndarray:
    """Each document's mean loss under the reference model (`data.reference_workdir`)."""
    if self.scorer is None:
      raise ValueError("scoring documents needs the reference model: pass a scorer to prepare")
    return np.asarray(self.scorer(self.texts), np.float64)

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
