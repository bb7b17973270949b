"""A tiny sweep, run once per session, that the sweep, plot and notebook tests read; and a root
holding one run of each study dimension (architecture, fine-tuning, quantization)."""

import subprocess
import sys
from pathlib import Path

import pytest

from efficiency import sweep as sweep_lib
from tests.helpers import ROOT, run_train, tiny_overrides, tiny_train_flags

SWEEP_FILE = '''
def get_sweep():
  return dict(
      base="configs/default.py",
      overrides={overrides!r},
      grid={{"model.num_kv_heads": [1, 2]}},
      points=[{{"model.num_kv_heads": 3}}],  # 3 does not divide 4 heads: this point fails
  )
'''


@pytest.fixture(scope="session")
def sweep_data_dir(tmp_path_factory) -> Path:
  return tmp_path_factory.mktemp("sweep_data")


@pytest.fixture(scope="session")
def sweep_file(tmp_path_factory, tiny_corpus, sweep_data_dir) -> Path:
  path = tmp_path_factory.mktemp("sweeps") / "tiny.py"
  overrides = tiny_overrides(tiny_corpus, sweep_data_dir, steps=20, eval_every=10,
                             checkpoint_every=10)
  path.write_text(SWEEP_FILE.format(overrides=overrides))
  return path


@pytest.fixture(scope="session")
def sweep_root(tmp_path_factory, sweep_file) -> Path:
  root = tmp_path_factory.mktemp("sweep") / "root"
  failed = sweep_lib.run_sweep(str(sweep_file), root, parallel=2)
  assert failed == 1
  return root


@pytest.fixture(scope="session")
def techniques_root(tmp_path_factory, sweep_root, tiny_corpus, sweep_data_dir) -> Path:
  """The sweep's gqa run, a LoRA fine-tune of it, and an int8-trained run with an int4 export."""
  root = tmp_path_factory.mktemp("techniques")
  pretrained = sweep_root / "num_kv_heads-2"
  (root / "gqa").symlink_to(pretrained)
  short = dict(steps=6, eval_every=3, checkpoint_every=6)
  run_train(root / "lora", [
      "--config=configs/finetune.py",
      *tiny_train_flags(tiny_corpus, sweep_data_dir, init_from=str(pretrained), **{
          "data.name": "stdlib", "peft.method": "lora", "peft.rank": 2, **short}),
  ])
  run_train(root / "int8", tiny_train_flags(tiny_corpus, sweep_data_dir, **{
      "quant.mode": "int8", **short}))
  proc = subprocess.run(
      [sys.executable, "-m", "evals.quantize", f"--workdir={root / 'int8'}", "--bits=4",
       "--decode_tokens=4", "--prompt_len=8"],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return root
