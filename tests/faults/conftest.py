"""Fixtures of the fault-injection suite: one uninterrupted tiny run to compare against."""

import shutil
from pathlib import Path

import pytest

from efficiency.train.loop import train_and_evaluate
from tests.helpers import tiny_train_config


@pytest.fixture(scope="session")
def fault_data_dir(tmp_path_factory) -> Path:
  return tmp_path_factory.mktemp("fault_data")


@pytest.fixture(scope="session")
def fault_config(tiny_corpus, fault_data_dir):
  """The tiny run's config: 40 steps, eval and checkpoint every 20, log every 5."""
  return tiny_train_config(tiny_corpus, fault_data_dir)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, fault_config) -> Path:
  """The workdir of the uninterrupted run (checkpoints 20 and 40)."""
  workdir = tmp_path_factory.mktemp("reference") / "work"
  train_and_evaluate(fault_config, workdir)
  return workdir


@pytest.fixture
def reference_copy(reference_run, tmp_path) -> Path:
  """A copy of the finished reference workdir, to damage."""
  return Path(shutil.copytree(reference_run, tmp_path / "work"))
