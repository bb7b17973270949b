"""Packing tokenized documents into fixed-length rows, with segment ids, positions and weights.

Each document becomes `inputs = [BOS] + tokens` and `targets = tokens + [EOS]`, so every input
position's target is the next token of the same document. Grain's concat-then-split packing then
fills rows back to back: a document longer than the room left in a row continues in the next row
(with a new segment id, and positions restarting at 0). Rows are padded (segment id 0, weight 0)
only where the documents run out, that is at the end of a finite epoch.

The packer's state is that of Grain's, made safe to restore from JSON (as Orbax saves it).
"""

import grain
import numpy as np

Row = dict[str, np.ndarray]


def document_example(tokens: np.ndarray, *, bos_id: int, eos_id: int) -> Row:
  """A document's model inputs (`[BOS] + tokens`) and next-token targets (`tokens + [EOS]`)."""
  tokens = np.asarray(tokens, np.int32)
  return {
      "inputs": np.concatenate([np.array([bos_id], np.int32), tokens]),
      "targets": np.concatenate([tokens, np.array([eos_id], np.int32)]),
  }


def _finish_row(packed: Row) -> Row:
  """Renames the packer's outputs to the batch contract and adds loss weights."""
  segment_ids = packed["inputs_segment_ids"]
  return {
      "inputs": packed["inputs"],
      "targets": packed["targets"],
      "segment_ids": segment_ids,
      "positions": packed["inputs_positions"],
      "weights": (segment_ids > 0).astype(np.float32),
  }


class _JsonStateIterator(grain.DatasetIterator):
  """Grain's concat-then-split iterator, restorable from its state after a JSON round trip.

  Grain 0.2.18 marks "no leftover document" in the state with a `(-1, -1)` tuple and compares
  restored states against it; JSON turns it into a list, which would restore a bogus leftover.
  """

  def __next__(self) -> Row:
    return next(self._parent)

  def get_state(self) -> dict:
    return self._parent.get_state()

  def set_state(self, state: dict) -> None:
    slices = {key: tuple(value) for key, value in state["remainder_slices"].items()}
    self._parent.set_state({**state, "remainder_slices": slices})


class _JsonStateDataset(grain.IterDataset):
  """Wraps the packer's iterators in `_JsonStateIterator`."""

  def __iter__(self) -> _JsonStateIterator:
    return _JsonStateIterator(iter(self._parent))


def pack(examples: grain.IterDataset, seq_len: int) -> grain.IterDataset:
  """Packs `document_example`s into rows of `seq_len`: the five int32/float32 features."""
  packed = grain.experimental.ConcatThenSplitIterDataset(
      examples, length_struct={"inputs": seq_len, "targets": seq_len}
  )
  return _JsonStateDataset(packed).map(_finish_row)
