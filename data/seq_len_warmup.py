"""Sequence-length warmup (Li et al., 2022): early batches in short pieces, cut into short rows.

During the first `data.seq_len_warmup.steps` steps the context grows from
`data.seq_len_warmup.start` to `seq_len`: L(step) rises linearly, and batch `step` is cut into
pieces of at most P(step) tokens, where P(step), the piece length, is the largest bucket <= L(step).
The buckets are `seq_len / 2**k` (every such integer down to the largest one <= start), so a
run compiles at most one train step per bucket. From step `steps` on, batches are left as packed.

Cuts fall at every row offset that is a multiple of P (and, as always, where a packed segment
starts), so no piece crosses a P-token boundary of its row. Each piece is its own segment:
positions restart at 0 and attention never reaches outside it.

What a warmup step keeps fixed (`data.seq_len_warmup.fixed`):
- `tokens` (the default): every token is still trained on; nothing is added or padded, so a
  warmup step trains on as many tokens as a full one, and only attention gets cheaper.
- `sequences` (Li et al.'s schedule): the batch keeps its `batch_size` rows, each its first
  P-token chunk ([B, T] -> [B, P]); the rest of every row is skipped. A warmup step trains on,
  and costs, B * P tokens, so early steps are P / T as dear (`rows_per_step`).

With `fixed=tokens`, two layouts carry exactly the same pieces:
- bucketed (`data.seq_len_warmup.buckets=True`, the default): a [B, T] batch becomes
  [B * T / P, P], row r's chunk c being row r * T / P + c, with segment ids renumbered from 1 in
  every short row. Attention costs T * P instead of T * T per row, so warmup steps are cheaper.
- masked (`buckets=False`): rows stay T long (static shape, nothing recompiles) and the pieces
  are told apart by segment ids; the step costs as much as a full-length one.
Reshaping a masked batch to [B * T / P, P] gives the bucketed one (segment ids aside, which only
need to tell pieces of one row apart), so the two train on identical tokens, targets, weights
and positions, and their losses agree to float rounding.

Shapes downstream: P divides T, so the B * T / P short rows split over processes, data-parallel
devices and micro-batches wherever the B rows do, and each shard's rows stay contiguous (any
process count assembles the same global batch). The train loop compiles a step per row length
on first use; memory planning uses the full-length step, the largest.

The step count is part of the iterator's state, so resumed runs continue the warmup exactly.
"""

import grain
import ml_collections
import numpy as np

Batch = dict[str, np.ndarray]
WARMUP_FIXED = ("tokens", "sequences")  # what a warmup step keeps of a full one


def max_segment_len(step: int, config: ml_collections.ConfigDict) -> int:
  """L(step): the longest context allowed in batch `step` (0-based)."""
  w = config.data.seq_len_warmup
  if step >= w.steps:
    return config.seq_len
  return int(w.start + (config.seq_len - w.start) * step / w.steps)


def bucket_lengths(seq_len: int, start: int) -> tuple[int, ...]:
  """The piece lengths warmup uses, longest first: seq_len / 2**k down to the largest <= start
  (empty when no such integer is <= start)."""
  lengths = [seq_len]
  while lengths[-1] > start and lengths[-1] % 2 == 0:
    lengths.append(lengths[-1] // 2)
  return tuple(lengths) if lengths[-1] <= start else ()


def piece_len(step: int, config: ml_collections.ConfigDict) -> int:
  """P(step): the largest bucket <= L(step); `seq_len` once warmup is over."""
  longest = max_segment_len(step, config)
  lengths = bucket_lengths(config.seq_len, config.data.seq_len_warmup.start)
  return next(length for length in lengths if length <= longest)


def split_segments(batch: Batch, piece: int) -> Batch:
  """Cuts the segments of `batch` at every row offset that is a multiple of `piece`: each piece
  gets its own segment id (numbered along the row) and positions from 0."""
  t = batch["segment_ids"].shape[1]
  real_BT = batch["segment_ids"] > 0
  starts_BT = np.zeros_like(real_BT)
  starts_BT[:, ::piece] = True
  starts_BT[:, 1:] |= batch["segment_ids"][:, 1:] != batch["segment_ids"][:, :-1]
  offsets_T = np.arange(t)
  first_BT = np.maximum.accumulate(np.where(starts_BT, offsets_T, 0), axis=1)
  positions_BT = ((offsets_T - first_BT) * real_BT).astype(np.int32)
  segment_ids_BT = (np.cumsum(starts_BT & real_BT, axis=1) * real_BT).astype(np.int32)
  return {**batch, "segment_ids": segment_ids_BT, "positions": positions_BT}


def to_rows(batch: Batch, piece: int) -> Batch:
  """A batch cut by `split_segments(batch, piece)` as [B * T / piece, piece] rows, segment ids
  renumbered from 1 in each row (padding stays 0)."""
  rows = {k: v.reshape(-1, piece) for k, v in batch.items()}
  ids_RP = rows["segment_ids"]
  real_RP = ids_RP > 0
  first_R1 = np.where(real_RP, ids_RP, np.iinfo(np.int32).max).min(axis=1, keepdims=True)
  rows["segment_ids"] = np.where(real_RP, ids_RP - first_R1 + 1, 0).astype(np.int32)
  return rows


def warmup_batch(batch: Batch, piece: int, buckets: bool, fixed: str = "tokens") -> Batch:
  """`batch` cut into pieces of at most `piece` tokens: as short rows with `buckets`, else at
  full length; with `fixed="sequences"`, only each row's first `piece` tokens, so cut. A
  `piece` of the row length leaves it as it is."""
  if piece >= batch["segment_ids"].shape[1]:
    return batch
  cut = split_segments(batch, piece)
  if fixed == "sequences":
    return {k: v[:, :piece] for k, v in cut.items()}
  return to_rows(cut, piece) if buckets else cut


def rows_per_step(config: ml_collections.ConfigDict, row_len: int) -> int:
  """Global rows of a train step whose rows are `row_len` long: `batch_size` at full length or
  with `fixed=sequences`; else the same tokens in `batch_size * seq_len / row_len` rows."""
  if config.data.seq_len_warmup.get("fixed", "tokens") == "sequences":
    return config.batch_size
  return config.batch_size * (config.seq_len // row_len)


class _WarmupIterator(grain.DatasetIterator):
  """Applies `warmup_batch` with P(step), counting steps in its state."""

  def __init__(self, parent: grain.DatasetIterator, config: ml_collections.ConfigDict):
    super().__init__(parent)
    self._config = config
    self._buckets = bool(config.data.seq_len_warmup.get("buckets", True))
    self._fixed = config.data.seq_len_warmup.get("fixed", "tokens")
    self._step = 0

  def __next__(self) -> Batch:
    batch = next(self._parent)
    piece = piece_len(self._step, self._config)
    self._step += 1
    return warmup_batch(batch, piece, self._buckets, self._fixed)

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
