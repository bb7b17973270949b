"""A tiny sweep, run once per session, that the sweep, plot and notebook tests read."""

from pathlib import Path

import pytest

from evals import sweep as sweep_lib
from tests.conftest import tiny_train_flags

SWEEP_FILE = '''
def get_sweep():
  return dict(
      base="configs/default.py",
      overrides={overrides!r},
      grid={{"model.num_kv_heads": [1, 2]}},
      points=[{{"model.num_kv_heads": 3}}],  # 3 does not divide 4 heads: this point fails
  )
'''


def tiny_overrides(corpus: Path, data_dir: Path) -> dict:
  flags = tiny_train_flags(corpus, data_dir, steps=20, eval_every=10, checkpoint_every=10)
  return dict(flag[len("--config."):].split("=", 1) for flag in flags)


@pytest.fixture(scope="session")
def sweep_file(tmp_path_factory, tiny_corpus) -> Path:
  path = tmp_path_factory.mktemp("sweeps") / "tiny.py"
  overrides = tiny_overrides(tiny_corpus, tmp_path_factory.mktemp("sweep_data"))
  path.write_text(SWEEP_FILE.format(overrides=overrides))
  return path


@pytest.fixture(scope="session")
def sweep_root(tmp_path_factory, sweep_file) -> Path:
  root = tmp_path_factory.mktemp("sweep") / "root"
  failed = sweep_lib.run_sweep(str(sweep_file), root, parallel=2)
  assert failed == 1
  return root
