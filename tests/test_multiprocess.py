"""train.py as two processes on localhost (jax.distributed with gloo collectives): launched by
flags, by SLURM's environment and by JAX's generic one, and stopped by SIGTERM to one process."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT, assert_same_run, free_port, tiny_train_flags


def _launch(workdir, flags, envs, args=lambda i: []) -> list[subprocess.Popen]:
  """Two train.py processes, process i with environment `envs[i]` and flags `args(i)`."""
  return [
      subprocess.Popen(
          [sys.executable, "train.py", f"--workdir={workdir}", *args(i), *flags],
          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
          env={**os.environ, **envs[i]},
      )
      for i in range(2)
  ]


def _wait(procs, codes=(0, 0)) -> None:
  outputs = [p.communicate(timeout=300) for p in procs]
  for proc, code, (_, err) in zip(procs, codes, outputs, strict=True):
    assert proc.returncode == code, err[-3000:]


def _slurm_env(i: int) -> dict[str, str]:
  """What srun sets for task i of a 2-task step on this host; the job id picks the coordinator
  port (jax uses 61440 + job id % 4096), so pick a free one."""
  while True:
    port = 61440 + int.from_bytes(os.urandom(2), "little") % 4096
    with socket.socket() as s:
      try:
        s.bind(("127.0.0.1", port))
        break
      except OSError:
        continue
  job = str(port - 61440 + 4096 * 1000)
  return {"SLURM_JOB_ID": job, "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "2",
          "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i), "SLURM_STEP_NUM_NODES": "1"}


@pytest.fixture(scope="module")
def flags(tmp_path_factory, tiny_corpus):
  return tiny_train_flags(tiny_corpus, tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, flags):
  """An uninterrupted 40-step run of two processes launched with flags."""
  workdir = tmp_path_factory.mktemp("two") / "work"
  address = f"127.0.0.1:{free_port()}"
  _wait(_launch(workdir, flags, [{}, {}], lambda i: [
      f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"]))
  return workdir


def test_two_process_run_trains_and_writes_one_summary(two_process_run):
  summary = json.loads((two_process_run / "summary.json").read_text())
  assert summary["process_count"] == 2 and summary["devices"] == 2
  assert summary["mesh"] == {"data": 2, "fsdp": 1, "tensor": 1, "expert": 1}
  assert summary["status"] == "completed" and summary["steps"] == 40
  # Full rows of batch 4 x 32 tokens: both processes' tokens are counted.
  assert summary["tokens_seen"] == 40 * 4 * 32
  data = two_process_run / "checkpoints" / "40" / "data"
  saved = sorted(p.name for p in data.glob("process_*"))
  assert saved == ["process_0-of-2.json", "process_1-of-2.json"]
  assert not (two_process_run / "lock").exists()


def test_sigterm_to_one_process_stops_both_at_one_step(two_process_run, flags, tmp_path):
  """Launched as SLURM would: SIGTERM to process 1 makes both save the same step and exit;
  relaunched with JAX's generic variables, the job ends bit for bit as the uninterrupted one."""
  workdir = tmp_path / "work"
  slurm = _slurm_env(0)
  procs = _launch(workdir, flags, [slurm, {**slurm, "SLURM_PROCID": "1", "SLURM_LOCALID": "1"}])
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and not (metrics.exists() and '"step": 10' in metrics.read_text()):
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)
  _wait(procs, codes=(128 + signal.SIGTERM, 128 + signal.SIGTERM))
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["status"] == "interrupted" and 10 <= summary["checkpoint_step"] < 40
  step = summary["checkpoint_step"]
  saved = sorted(p.name for p in (workdir / "checkpoints" / str(step) / "data").glob("process_*"))
  assert saved == ["process_0-of-2.json", "process_1-of-2.json"]

  address = f"127.0.0.1:{free_port()}"
  env = lambda i: {"JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": "2",
                   "JAX_PROCESS_ID": str(i)}
  _wait(_launch(workdir, flags, [env(0), env(1)]))
  assert json.loads((workdir / "summary.json").read_text())["resumed_from_step"] == step
  assert_same_run(workdir, two_process_run)
