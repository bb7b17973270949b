"""Shared test fixtures (the helpers they use are in tests/helpers.py)."""

import shutil
import sysconfig
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from tests.helpers import data_config, write_corpus


@pytest.fixture
def rng() -> np.random.Generator:
  return np.random.default_rng(0)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
  """About 40 small real Python files, copied from this interpreter's standard library."""
  root = tmp_path_factory.mktemp("tiny_corpus")
  stdlib = Path(sysconfig.get_paths()["stdlib"])
  small = sorted(p for p in stdlib.glob("*.py") if 2_000 < p.stat().st_size < 12_000)[:40]
  for path in small:
    shutil.copy(path, root / path.name)
  return root


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> tuple[str, dict[str, str]]:
  """A tiny random corpus shared by the session: its root and its expected texts by path."""
  root = tmp_path_factory.mktemp("corpus")
  return str(root), write_corpus(root)


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory) -> str:
  """One data dir for the session, so the corpus is prepared and tokenizers trained once."""
  return str(tmp_path_factory.mktemp("data_dir"))


@pytest.fixture
def config(corpus, shared_data_dir) -> ml_collections.ConfigDict:
  """The data tests' config: the default one shrunk to the tiny random corpus."""
  return data_config(corpus[0], shared_data_dir)
