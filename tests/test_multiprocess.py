"""train.py as two processes on localhost (jax.distributed with gloo collectives)."""

import json
import subprocess
import sys

from tests.helpers import ROOT, free_port, tiny_train_flags


def test_two_process_run_trains_and_writes_one_summary(tmp_path, tiny_corpus):
  workdir = tmp_path / "work"
  flags = tiny_train_flags(tiny_corpus, tmp_path / "data", steps=10, eval_every=5,
                           checkpoint_every=5, log_every=5)
  address = f"127.0.0.1:{free_port()}"
  procs = [
      subprocess.Popen(
          [sys.executable, "train.py", f"--workdir={workdir}", f"--coordinator_address={address}",
           "--num_processes=2", f"--process_id={i}", *flags],
          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      )
      for i in range(2)
  ]
  outputs = [p.communicate(timeout=300) for p in procs]
  for proc, (_, err) in zip(procs, outputs, strict=True):
    assert proc.returncode == 0, err[-3000:]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["process_count"] == 2 and summary["devices"] == 2
  assert summary["mesh"] == {"data": 2, "fsdp": 1, "tensor": 1, "expert": 1}
  assert summary["status"] == "completed" and summary["steps"] == 10
  # Full rows of batch 4 x 32 tokens: both processes' tokens are counted.
  assert summary["tokens_seen"] == 10 * 4 * 32
  saved = sorted(p.name for p in (workdir / "checkpoints" / "10" / "data").glob("process_*"))
  assert saved == ["process_0-of-2.json", "process_1-of-2.json"]
