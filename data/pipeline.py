"""Grain input pipelines: a packed, per-process, checkpointable train iterator and eval batches.

Every batch is this process's share of the global batch: a dict of numpy arrays of shape
[batch_size // process_count, seq_len] (see `data.packing` for what the features mean; the
config is a resolved one, so the batch splits evenly over processes):
  inputs, targets, segment_ids, positions: int32; weights: float32.
Each process reads only the documents `i` with `i % process_count == process_index` of the
prepared document list (`data.prepared`: bad documents and filtered ones dropped; with a
curriculum, the curriculum's order).

The train iterator's position is saved and restored with `get_state()` / `set_state()`, or by
Orbax through `grain.checkpoint.CheckpointSave(iterator)` / `CheckpointRestore(iterator)`.
"""

import functools
import itertools

import grain
import ml_collections
import numpy as np
from absl import logging

from data import packing
from data.curriculum.order import curriculum_order
from data.prepared import Prepared, Subset, prepare
from data.seq_len_warmup import SeqLenWarmup
from data.sources import Records, document_bytes, load_source
from data.tokenizer import Tokenizer
from efficiency.errors import ConfigError

Batch = dict[str, np.ndarray]

# Eval rows are sampled with a fixed seed, so every run and seed is scored on the same tokens.
EVAL_ROW_SEED = 0


def local_batch_size(config: ml_collections.ConfigDict, process_count: int) -> int:
  """Rows of the global batch that each process loads."""
  return config.batch_size // process_count


def _shard(
    records: Records, split: str, process_index: int, process_count: int
) -> grain.MapDataset:
  """This process's documents of a split, as a Grain MapDataset of records."""
  docs = grain.MapDataset.source(records)[process_index::process_count]
  if not len(docs):
    raise ConfigError(
        f"the {split} split has {len(records)} documents, too few for process {process_index} "
        f"of process_count={process_count}"
    )
  return docs


def _tokenize(record: dict, tokenizer: Tokenizer) -> packing.Row:
  """A stored document as model inputs and targets."""
  tokens = tokenizer.encode(document_bytes(record).decode("utf-8"))
  return packing.document_example(tokens, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id)


def _batches(
    docs: grain.MapDataset,
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    batch_size: int,
    row_shuffle_seed: int | None,
) -> grain.IterDataset:
  """Tokenizes documents in `data.worker_threads` threads, packs them and batches the rows.

  Long documents fill many consecutive rows, so rows are shuffled within windows of
  `data.shuffle_window` rows (when a seed is given) to keep one document from filling a batch.
  """
  read_options = grain.ReadOptions(
      num_threads=config.data.worker_threads, prefetch_buffer_size=batch_size
  )
  examples = docs.map(functools.partial(_tokenize, tokenizer=tokenizer))
  rows = packing.pack(examples.to_iter_dataset(read_options), config.seq_len)
  if row_shuffle_seed is not None and config.data.shuffle_window > 1:
    rows = grain.experimental.WindowShuffleIterDataset(
        rows, window_size=config.data.shuffle_window, seed=row_shuffle_seed
    )
  return rows.batch(batch_size, drop_remainder=True)


def _take(ds: grain.IterDataset, n: int) -> list[Batch]:
  """The first `n` elements of `ds` (fewer if it ends first)."""
  iterator = iter(ds)
  try:
    return list(itertools.islice(iterator, n))
  finally:
    iterator.close()


def make_train_iterator(
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    *,
    process_index: int,
    process_count: int,
    prepared: Prepared | None = None,
) -> grain.DatasetIterator:
  """Endless local train batches: documents shuffled with `seed` anew each epoch, then packed.

  With a curriculum (`data.curriculum.difficulty`), documents come in the curriculum's order
  instead; with `data.seq_len_warmup.start`, the first batches' segments are cut short.
  `data.prefetch` batches are prepared ahead in a background thread. The sequence of batches
  depends only on the config, the tokenizer and the process index and count. `prepared` is the
  config's prepared data (read from its cache when not given).
  """
  batch_size = local_batch_size(config, process_count)
  prepared = prepare(config, tokenizer) if prepared is None else prepared
  records = load_source(config).train
  if prepared.scores_N is None:
    docs = _shard(Subset(records, prepared.train_N), "train", process_index, process_count)
    if config.data.shuffle:
      docs = docs.shuffle(seed=config.seed)
  else:
    order = curriculum_order(prepared.scores_N, prepared.train_tokens_N, config)
    ordered = Subset(records, prepared.train_N[order])
    docs = _shard(ordered, "train", process_index, process_count)
  row_seed = config.seed if config.data.shuffle else None
  batches = _batches(docs.repeat(), config, tokenizer, batch_size, row_seed)
  if config.data.seq_len_warmup.start:
    batches = SeqLenWarmup(batches, config)
  prefetched = grain.experimental.ThreadPrefetchIterDataset(
      batches, prefetch_buffer_size=config.data.prefetch
  )
  return iter(prefetched)


def make_eval_batches(
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    *,
    process_index: int,
    process_count: int,
    prepared: Prepared | None = None,
) -> list[Batch]:
  """The first `eval_batches` local batches of the validation split's rows.

  Rows are shuffled in windows of `data.shuffle_window` with a fixed seed, so the batches sample
  the whole split rather than its first few documents.

  If the split is too small to fill them, it is repeated (and a warning says so).
  """
  batch_size = local_batch_size(config, process_count)
  prepared = prepare(config, tokenizer) if prepared is None else prepared
  records = Subset(load_source(config).validation, prepared.validation_M)
  docs = _shard(records, "validation", process_index, process_count)
  batches = _take(
      _batches(docs, config, tokenizer, batch_size, EVAL_ROW_SEED), config.eval_batches
  )
  if len(batches) < config.eval_batches:
    logging.warning(
        "The validation split (%d documents on this process) fills only %d of eval_batches=%d "
        "batches of %d x %d tokens; repeating it",
        len(docs),
        len(batches),
        config.eval_batches,
        batch_size,
        config.seq_len,
    )
    batches = _take(
        _batches(docs.repeat(), config, tokenizer, batch_size, EVAL_ROW_SEED),
        config.eval_batches,
    )
  return batches
