"""Shared test fixtures: small configs and random batches."""

import shutil
import sysconfig
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from configs.default import get_config


def tiny_model_config(**overrides) -> ml_collections.ConfigDict:
  """A model config small enough for unit tests."""
  cfg = get_config().model
  cfg.update(
      num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, d_ff=64, vocab_size=97,
      init_std=0.2,
  )
  cfg.update(overrides)
  return cfg


@pytest.fixture
def rng() -> np.random.Generator:
  return np.random.default_rng(0)


def random_packed_batch(rng: np.random.Generator, batch: int, length: int, vocab: int):
  """Random tokens in rows of 1-3 packed segments plus trailing padding."""
  tokens = rng.integers(1, vocab, size=(batch, length)).astype(np.int32)
  segment_ids = np.zeros((batch, length), np.int32)
  positions = np.zeros((batch, length), np.int32)
  for b in range(batch):
    cuts = np.sort(rng.choice(np.arange(2, length - 2), size=2, replace=False))
    bounds = [0, *cuts, length - 1]
    for s in range(3):
      segment_ids[b, bounds[s] : bounds[s + 1]] = s + 1
      positions[b, bounds[s] : bounds[s + 1]] = np.arange(bounds[s + 1] - bounds[s])
  tokens[segment_ids == 0] = 0
  return tokens, segment_ids, positions


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
  """About 40 small real Python files, copied from this interpreter's standard library."""
  root = tmp_path_factory.mktemp("tiny_corpus")
  stdlib = Path(sysconfig.get_paths()["stdlib"])
  small = sorted(p for p in stdlib.glob("*.py") if 2_000 < p.stat().st_size < 12_000)[:40]
  for path in small:
    shutil.copy(path, root / path.name)
  return root


def tiny_train_flags(corpus: Path, data_dir: Path, **overrides) -> list[str]:
  """train.py flags for a seconds-long run of a tiny model on `corpus`."""
  values = {
      "steps": 40, "batch_size": 4, "seq_len": 32, "eval_every": 20, "eval_batches": 2,
      "log_every": 5, "checkpoint_every": 20, "target_loss": 6.0,
      "model.num_layers": 2, "model.d_model": 32, "model.num_heads": 4, "model.num_kv_heads": 2,
      "model.d_ff": 64, "model.vocab_size": 512, "optimizer.warmup_steps": 5,
      "data.validation_percent": 15,
      "data.corpus_root": str(corpus), "data.data_dir": str(data_dir),
  }
  values.update(overrides)
  return [f"--config.{k}={v}" for k, v in values.items()]
