"""Tokens trained on per source of a mixture (`data.mixture`): counted on the host from each
batch's `sources` (each token's source id, taken out of the batch before it reaches the model)
and summed over processes when read."""

import jax
import numpy as np
from jax.experimental import multihost_utils

from data.pipeline import Batch


class SourceTokens:
  """Real target tokens per source label, from `saved` (a checkpoint's totals) on."""

  def __init__(self, labels: list[str], saved: dict[str, int] | None = None):
    self.labels = labels
    self.totals = {label: int((saved or {}).get(label, 0)) for label in labels}
    self.unread_S = np.zeros(len(labels), np.int64)  # this process's counts since the last read

  def take(self, batch: Batch) -> Batch:
    """The batch without `sources`, whose real targets it counts."""
    batch = dict(batch)
    sources_BT = batch.pop("sources")
    real = batch["weights"] > 0
    self.unread_S += np.bincount(sources_BT[real], minlength=len(self.labels))[: len(self.labels)]
    return batch

  def read(self) -> dict[str, int]:
    """The totals, with every process's unread counts added (each process must call it at the
    same step)."""
    unread_S = self.unread_S
    if jax.process_count() > 1:
      unread_S = np.asarray(multihost_utils.process_allgather(unread_S)).sum(0)
    for label, count in zip(self.labels, unread_S.tolist(), strict=True):
      self.totals[label] += int(count)
    self.unread_S = np.zeros_like(self.unread_S)
    return dict(self.totals)
