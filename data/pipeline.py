"""Grain input pipelines: a packed, checkpointable train iterator and eval batches, both split
into `data.shards` independent streams so that the data position does not depend on how many
processes read it.

Every batch is this process's share of the global batch: a dict of numpy arrays of shape
[batch_size // process_count, seq_len] (see `data.packing` for what the features mean; the
config is a resolved one, so the batch splits evenly over processes and shards):
  inputs, targets, segment_ids, positions: int32; weights: float32.
Shard `s` of `S = data.shards` reads the documents `i` with `i % S == s` of the prepared document
list (`data.prepared`: bad documents and filtered ones dropped; with a curriculum, the
curriculum's order) and fills rows [s * B/S, (s+1) * B/S) of every global batch of B rows.
Process p of P owns shards [p * S/P, (p+1) * S/P), so the global batches are the same for any
process count that divides S.

With a mixture (`data.mixture`), each shard packs (and shuffles) the rows of every source on its
own and mixes the rows through `grain.IterDataset.mix` (keyed by source label, weighted by
`data.mixture.*.weight`: the weights are shares of rows, that is of tokens), just before
batching: no later stage replays the mix from a saved state, so a resume with other weights
continues each source exactly where it stopped. Rows carry `sources` [rows, seq_len] int32, the
row's source id (its index in `mixture.labels`); the loop takes it out before the batch reaches
the model. Eval batches are made per source, each as that source alone would make them.

The train iterator's position is the position of each of its shards. `ShardedIterator` saves it
with `get_state()` (Orbax: `grain.checkpoint.CheckpointSave(iterator)`, one file per process) and
restores it from the files of any process count with `restore_files`.
"""

import functools
import itertools
import json
from pathlib import Path

import grain
import ml_collections
import numpy as np
from absl import logging

from data import mixture, packing
from data.curriculum.order import curriculum_order
from data.prepared import Prepared, Subset, prepare
from data.seq_len_warmup import SeqLenWarmup
from data.sources import Records, document_bytes, load_source
from data.tokenizer import Tokenizer
from efficiency.errors import ConfigError

Batch = dict[str, np.ndarray]

# Eval rows are sampled with a fixed seed, so every run and seed is scored on the same tokens.
EVAL_ROW_SEED = 0


def shard_count(config: ml_collections.ConfigDict, process_count: int) -> int:
  """`data.shards`, or the process count where it is 0 (a config not yet resolved)."""
  return config.data.get("shards", 0) or process_count


def local_shards(config: ml_collections.ConfigDict, process_index: int,
                 process_count: int) -> range:
  """The shards process `process_index` of `process_count` reads."""
  shards = shard_count(config, process_count)
  if shards % process_count or config.batch_size % shards:
    raise ConfigError(
        f"data.shards={shards} must be a multiple of process_count={process_count} and divide "
        f"batch_size={config.batch_size}"
    )
  per_process = shards // process_count
  return range(process_index * per_process, (process_index + 1) * per_process)


def _shard(
    records: Records, split: str, shard_index: int, shards: int
) -> grain.MapDataset:
  """One shard's documents of a split, as a Grain MapDataset of records."""
  docs = grain.MapDataset.source(records)[shard_index::shards]
  if not len(docs):
    raise ConfigError(
        f"the {split} split has {len(records)} documents, too few for shard {shard_index} of "
        f"data.shards={shards}"
    )
  return docs


def _concat(batches: list[Batch]) -> Batch:
  if len(batches) == 1:
    return batches[0]
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


class ShardedIterator(grain.DatasetIterator):
  """This process's train batches: the rows of its shards' iterators, concatenated in shard
  order. Its state is each shard's position, by shard index."""

  def __init__(self, shards: dict[int, grain.DatasetIterator]):
    super().__init__()  # no parents: each shard keeps its own context
    self.shards = shards

  def __next__(self) -> Batch:
    return _concat([next(iterator) for iterator in self.shards.values()])

  def get_state(self) -> dict:
    """{"shards": {index: position}}: what Grain's checkpoint handler saves per process."""
    return {"shards": {str(i): iterator.get_state() for i, iterator in self.shards.items()}}

  def set_state(self, state: dict) -> None:
    self.set_shard_states(state["shards"])

  def set_shard_states(self, states: dict[str, dict]) -> None:
    """Moves every shard to its position in `states` (which may hold other shards too)."""
    missing = [i for i in self.shards if str(i) not in states]
    if missing:
      raise ValueError(f"the saved data position has no state for shards {missing}")
    for i, iterator in self.shards.items():
      iterator.set_state(states[str(i)])

  def start_prefetch(self) -> None:
    for iterator in self.shards.values():
      iterator.start_prefetch()

  def close(self) -> None:
    for iterator in self.shards.values():
      iterator.close()
    super().close()

  def restore_files(self, directory: str | Path) -> None:
    """Restores the position from the files every process of the saving job wrote into
    `directory` (a checkpoint's data/), whatever that job's process count was. A file of a run
    from before shards (one plain iterator state per process) holds shard p of P."""
    states = {}
    for path in Path(directory).glob("process_*-of-*.json"):
      saved = json.loads(path.read_text())
      if "shards" in saved:
        states.update(saved["shards"])
      else:
        states[path.name.split("_")[1].split("-")[0]] = saved
    self.set_shard_states(states)


def _tokenize(record: dict, tokenizer: Tokenizer) -> packing.Row:
  """A stored document as model inputs and targets."""
  tokens = tokenizer.encode(document_bytes(record).decode("utf-8"))
  return packing.document_example(tokens, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id)


def _rows(
    docs: grain.MapDataset,
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    batch_size: int,
    row_shuffle_seed: int | None,
) -> grain.IterDataset:
  """Tokenizes documents in `data.worker_threads` threads and packs them into rows.

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
  return rows


def _batches(
    docs: grain.MapDataset,
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    batch_size: int,
    row_shuffle_seed: int | None,
) -> grain.IterDataset:
  """The packed rows of `docs` (see `_rows`) in batches of `batch_size`."""
  rows = _rows(docs, config, tokenizer, batch_size, row_shuffle_seed)
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
) -> ShardedIterator:
  """Endless local train batches: in each shard, documents shuffled with `seed` anew each
  epoch, then packed.

  With a curriculum (`data.curriculum.difficulty`), documents come in the curriculum's order
  instead; with `data.seq_len_warmup.start`, the first batches' segments are cut short.
  `data.prefetch` batches are prepared ahead in a background thread per shard. The global
  sequence of batches depends only on the config and the tokenizer. `prepared` is the
  config's prepared data (read from its cache when not given).
  """
  shards = shard_count(config, process_count)
  batch_size = config.batch_size // shards
  prepared = prepare(config, tokenizer) if prepared is None else prepared
  if prepared.sources is not None:
    return _mixture_train_iterator(config, tokenizer, prepared, process_index, process_count)
  records = load_source(config).train
  if prepared.scores_N is None:
    documents = Subset(records, prepared.train_N)
  else:
    order = curriculum_order(prepared.scores_N, prepared.train_tokens_N, config)
    documents = Subset(records, prepared.train_N[order])
  row_seed = config.seed if config.data.shuffle else None
  iterators = {}
  for shard in local_shards(config, process_index, process_count):
    docs = _shard(documents, "train", shard, shards)
    if prepared.scores_N is None and config.data.shuffle:
      docs = docs.shuffle(seed=config.seed)
    batches = _batches(docs.repeat(), config, tokenizer, batch_size, row_seed)
    iterators[shard] = _prefetched(batches, config)
  return ShardedIterator(iterators)


def _prefetched(
    batches: grain.IterDataset, config: ml_collections.ConfigDict
) -> grain.DatasetIterator:
  """One shard's endless batches, with the warmup and prefetching the config asks for."""
  if config.data.seq_len_warmup.start:
    batches = SeqLenWarmup(batches, config)
  prefetched = grain.experimental.ThreadPrefetchIterDataset(
      batches, prefetch_buffer_size=config.data.prefetch
  )
  return iter(prefetched)


def _with_source(row: packing.Row, source: int) -> packing.Row:
  """A row of a mixture with `sources`: its source's id at every position."""
  return {**row, "sources": np.full(row["inputs"].shape, source, np.int32)}


def _mixture_train_iterator(
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    prepared: Prepared,
    process_index: int,
    process_count: int,
) -> ShardedIterator:
  """A mixture's train batches: in each shard, every source's rows (from that shard of its
  documents, shuffled with `seed` anew each epoch) mixed by weight. Sources of weight 0 are left
  out; the mix is keyed by label, so a resume with other weights continues each source where it
  stopped."""
  shards = shard_count(config, process_count)
  batch_size = config.batch_size // shards
  weights = mixture.weights(config)
  subs = mixture.source_configs(config)
  records = {label: load_source(sub).train for label, sub in subs.items()}
  row_seed = config.seed if config.data.shuffle else None
  iterators = {}
  for shard in local_shards(config, process_index, process_count):
    parts = {}
    for source, label in enumerate(subs):
      if weights[source] == 0:
        continue
      kept = Subset(records[label], prepared.sources[label].train_N)
      docs = _shard(kept, f"train (data.mixture.{label})", shard, shards)
      if config.data.shuffle:
        docs = docs.shuffle(seed=config.seed)
      rows = _rows(docs.repeat(), config, tokenizer, batch_size, row_seed)
      parts[label] = rows.map(functools.partial(_with_source, source=source))
    mixed = grain.IterDataset.mix(parts, {label: float(weights[i]) for i, label in
                                          enumerate(subs) if label in parts})
    iterators[shard] = _prefetched(mixed.batch(batch_size, drop_remainder=True), config)
  return ShardedIterator(iterators)


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

  If the split is too small to fill them, it is repeated (and a warning says so). A mixture's
  are every source's `eval_batches` batches, source after source.
  """
  shards = shard_count(config, process_count)
  batch_size = config.batch_size // shards
  prepared = prepare(config, tokenizer) if prepared is None else prepared
  if prepared.sources is not None:  # a mixture: every source's batches in turn
    per_source = make_eval_batches_per_source(
        config, tokenizer, process_index=process_index, process_count=process_count,
        prepared=prepared,
    )
    return [batch for batches in per_source.values() for batch in batches]
  records = Subset(load_source(config).validation, prepared.validation_M)
  per_shard = []
  for shard in local_shards(config, process_index, process_count):
    docs = _shard(records, "validation", shard, shards)
    batches = _take(
        _batches(docs, config, tokenizer, batch_size, EVAL_ROW_SEED), config.eval_batches
    )
    if len(batches) < config.eval_batches:
      logging.warning(
          "The validation split (%d documents in shard %d) fills only %d of eval_batches=%d "
          "batches of %d x %d tokens; repeating it",
          len(docs), shard, len(batches), config.eval_batches, batch_size, config.seq_len,
      )
      batches = _take(
          _batches(docs.repeat(), config, tokenizer, batch_size, EVAL_ROW_SEED),
          config.eval_batches,
      )
    per_shard.append(batches)
  return [_concat(list(step)) for step in zip(*per_shard, strict=True)]


def make_eval_batches_per_source(
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    *,
    process_index: int,
    process_count: int,
    prepared: Prepared,
) -> dict[str, list[Batch]]:
  """A mixture's eval batches by source label: each source's own, as the config of that source
  alone makes them (`make_eval_batches`)."""
  return {
      label: make_eval_batches(
          sub, tokenizer, process_index=process_index, process_count=process_count,
          prepared=prepared.sources[label],
      )
      for label, sub in mixture.source_configs(config).items()
  }
