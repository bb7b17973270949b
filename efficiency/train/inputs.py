"""The input data of a run: its tokenizer (following `data.tokenizer_from`), its prepared
documents (with the reference model scoring them when a filter or curriculum needs one), this
process's train iterator and eval batches. Every tool that reads a run's data goes through here.
"""

import dataclasses
import functools

import grain
import ml_collections
import numpy as np
from tqdm import tqdm

from data.packing import document_example
from data.pipeline import (
    Batch,
    make_eval_batches,
    make_eval_batches_per_source,
    make_train_iterator,
)
from data.prepared import Prepared, prepare, uses_reference
from data.tokenizer import Tokenizer, get_tokenizer
from efficiency.errors import ConfigError
from efficiency.evaluation import Evaluator
from efficiency.workdir import files
from efficiency.workdir.restore import TrainedModel, restore


def tokenizer_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config whose `data.tokenizer` `config` uses: its own, or that of the run in
  `data.tokenizer_from` (followed to the run that made it)."""
  source = config.data.get("tokenizer_from")
  if source:
    hint = "give a train.py workdir"
    return tokenizer_config(files.load_config(source, "data.tokenizer_from", hint))
  return config


def tokenizer_of(config: ml_collections.ConfigDict) -> Tokenizer:
  """The tokenizer `config` trains with (see `tokenizer_config`)."""
  return get_tokenizer(tokenizer_config(config))


class ReferenceScorer:
  """Per-document mean losses under the model of the run in `workdir` (`data.reference_workdir`):
  each document's first `seq_len` tokens, in the reference run's own tokenizer and sequence
  length. The model loads on first use; `key` (the workdir and its newest step) names it in the
  prepared-data cache."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    steps = files.checkpoint_steps(workdir)
    self.key = [workdir, steps[-1] if steps else None]

  @functools.cached_property
  def _model(self) -> tuple[TrainedModel, Tokenizer, Evaluator]:
    """The reference run's model, tokenizer and evaluator, loaded once (a filter and a
    difficulty scoring the same documents share them)."""
    hint = f"train one first: python train.py --workdir={self.workdir}"
    trained = restore(self.workdir, field="data.reference_workdir", hint=hint)
    return trained, tokenizer_of(trained.config), Evaluator(trained.model)

  def __call__(self, texts: list[str]) -> np.ndarray:
    trained, tokenizer, evaluator = self._model
    seq_len, batch_size = trained.config.seq_len, trained.config.batch_size
    losses = np.zeros(len(texts))
    for start in tqdm(range(0, len(texts), batch_size), desc="Reference losses", unit="batch"):
      chunk = texts[start : start + batch_size]
      batch = _document_rows(chunk, tokenizer, batch_size, seq_len)
      losses[start : start + len(chunk)] = evaluator.row_losses(trained.params, batch)[: len(chunk)]
    return losses


def _document_rows(texts: list[str], tokenizer: Tokenizer, rows: int, seq_len: int) -> Batch:
  """One row per text: its first `seq_len` inputs and targets; rows past the texts are padding."""
  batch = {k: np.zeros((rows, seq_len), np.int32) for k in ("inputs", "targets", "segment_ids")}
  batch["weights"] = np.zeros((rows, seq_len), np.float32)
  batch["positions"] = np.broadcast_to(np.arange(seq_len, dtype=np.int32), (rows, seq_len))
  for r, text in enumerate(texts):
    example = document_example(tokenizer.encode(text), bos_id=tokenizer.bos_id,
                               eos_id=tokenizer.eos_id)
    n = min(len(example["inputs"]), seq_len)
    batch["inputs"][r, :n] = example["inputs"][:n]
    batch["targets"][r, :n] = example["targets"][:n]
    batch["segment_ids"][r, :n] = 1
    batch["weights"][r, :n] = 1
  return batch


def prepared_of(
    config: ml_collections.ConfigDict, tokenizer: Tokenizer, progress: bool = False
) -> Prepared:
  """`config`'s prepared data (computed once, then read from its cache), scored by the reference
  model of `data.reference_workdir` where its filters or curriculum need one."""
  scorer = ReferenceScorer(config.data.reference_workdir) if uses_reference(config) else None
  return prepare(config, tokenizer, scorer, progress)


@dataclasses.dataclass
class Inputs:
  """A run's tokenizer, prepared data and this process's share of the batches."""

  tokenizer: Tokenizer
  prepared: Prepared
  train: grain.DatasetIterator | None
  eval_batches: list[Batch]
  eval_sources: dict[str, list[Batch]] | None = None  # a mixture's eval batches by source


def load_inputs(
    config: ml_collections.ConfigDict,
    process_index: int = 0,
    process_count: int = 1,
    train: bool = True,
    evaluation: bool = True,
) -> Inputs:
  """The inputs of a resolved `config` for one process (without the train iterator when `train`
  is False, without eval batches when `evaluation` is False)."""
  tokenizer = tokenizer_of(config)
  if tokenizer.vocab_size > config.model.vocab_size:
    raise ConfigError(
        f"model.vocab_size={config.model.vocab_size} is smaller than the tokenizer's "
        f"{tokenizer.vocab_size} tokens; use at least {tokenizer.vocab_size}"
    )
  prepared = prepared_of(config, tokenizer)
  shard = dict(process_index=process_index, process_count=process_count, prepared=prepared)
  eval_sources = None
  if evaluation and prepared.sources is not None:
    eval_sources = make_eval_batches_per_source(config, tokenizer, **shard)
    eval_batches = [batch for batches in eval_sources.values() for batch in batches]
  else:
    eval_batches = make_eval_batches(config, tokenizer, **shard) if evaluation else []
  return Inputs(
      tokenizer=tokenizer,
      prepared=prepared,
      train=make_train_iterator(config, tokenizer, **shard) if train else None,
      eval_batches=eval_batches,
      eval_sources=eval_sources,
  )
