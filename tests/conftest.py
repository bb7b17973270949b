"""Shared test fixtures (the helpers they use are in tests/helpers.py)."""

import os
import shutil
import sysconfig
from pathlib import Path

# Tests run on the CPU, quietly, also where libtpu and jax's CUDA plugin are installed (the dev
# dependencies): they would otherwise probe for chips first and log their failures.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import ml_collections
import numpy as np
import pytest

from tests.helpers import ROOT, data_config, write_corpus

# JAX's persistent compilation cache, shared by the test processes and the commands they start
# (train.py runs, multi-device scripts): each program compiles once per suite run. It lives in an
# ignored folder of the repository, so a fresh clone (CI) starts cold.
COMPILATION_CACHE = ROOT / ".cache" / "jax-compilation"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(COMPILATION_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


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
