"""Two processes on localhost (jax.distributed with gloo) read disjoint shards, and their global
batch equals the one a single process builds from both shards."""

import subprocess
import sys

import numpy as np

from data import pipeline
from data import tokenizer as tokenizer_lib
from tests.helpers import ROOT, data_config, free_port


def test_two_processes_assemble_the_single_process_global_batch(corpus, shared_data_dir, tmp_path):
  config = data_config(corpus[0], shared_data_dir, tokenizer="bytes")
  tokenizer = tokenizer_lib.get_tokenizer(config)
  locals_ = [
      next(pipeline.make_train_iterator(config, tokenizer, process_index=i, process_count=2))
      for i in range(2)
  ]
  out = tmp_path / "global.npz"
  address = f"127.0.0.1:{free_port()}"
  procs = [
      subprocess.Popen(
          [sys.executable, "-m", "tests.data.multihost_batch", address, str(i), corpus[0],
           shared_data_dir, str(out)],
          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      )
      for i in range(2)
  ]
  for proc in procs:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
  with np.load(out) as global_batch:
    for key, value in global_batch.items():
      np.testing.assert_array_equal(value, np.concatenate([b[key] for b in locals_]))
  # Each process's rows come from its own documents: the shards share no rows.
  rows = [{r.tobytes() for r in b["inputs"]} for b in locals_]
  assert not rows[0] & rows[1]
