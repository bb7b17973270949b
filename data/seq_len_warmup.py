"""Sequence-length warmup (Li et al., 2022) with static shapes: rows stay `seq_len` long.

During the first `data.seq_len_warmup.steps` steps, packed segments are cut into pieces of at
most L(step) tokens, L rising linearly from `data.seq_len_warmup.start` to `seq_len`; each piece
gets its own segment id and positions restarting at 0, so attention never reaches further back
than L. Every token is still trained on and nothing is padded, so no shape changes and nothing
recompiles. The cost: a step computes (and masks) the full seq_len x seq_len attention, so unlike
truly shorter sequences, warmup steps are not cheaper; only the context per token is shorter.

The step count is part of the iterator's state, so resumed runs continue the warmup exactly.
"""

import grain
import ml_collections
import numpy as np

Batch = dict[str, np.ndarray]


def max_segment_len(step: int, config: ml_collections.ConfigDict) -> int:
  """L(step): the longest segment allowed in batch `step` (0-based)."""
  w = config.data.seq_len_warmup
  if step >= w.steps:
    return config.seq_len
  return int(w.start + (config.seq_len - w.start) * step / w.steps)


def split_segments(batch: Batch, max_len: int) -> Batch:
  """Cuts every segment of `batch` into pieces of at most `max_len` tokens."""
  real_BT = batch["segment_ids"] > 0
  positions_BT = batch["positions"] % max_len
  starts_BT = positions_BT == 0
  starts_BT[:, 0] = True  # a row may begin inside a piece
  starts_BT[:, 1:] |= batch["segment_ids"][:, 1:] != batch["segment_ids"][:, :-1]
  starts_BT &= real_BT
  segment_ids_BT = (np.cumsum(starts_BT, axis=1) * real_BT).astype(np.int32)
  return {**batch, "segment_ids": segment_ids_BT, "positions": positions_BT.astype(np.int32)}


class _WarmupIterator(grain.DatasetIterator):
  """Applies `split_segments` with L(step), counting steps in its state."""

  def __init__(self, parent: grain.DatasetIterator, config: ml_collections.ConfigDict):
    super().__init__(parent)
    self._config = config
    self._step = 0

  def __next__(self) -> Batch:
    batch = next(self._parent)
    max_len = max_segment_len(self._step, self._config)
    self._step += 1
    return batch if max_len >= self._config.seq_len else split_segments(batch, max_len)

  def get_state(self) -> dict:
    return {"parent": self._parent.get_state(), "step": self._step}

  def set_state(self, state: dict) -> None:
    self._parent.set_state(state["parent"])
    self._step = int(state["step"])


class SeqLenWarmup(grain.IterDataset):
  """Batches of `parent` with sequence-length warmup applied."""

  def __init__(self, parent: grain.IterDataset, config: ml_collections.ConfigDict):
    super().__init__(parent)
    self._config = config

  def __iter__(self) -> _WarmupIterator:
    return _WarmupIterator(iter(self._parent), self._config)
