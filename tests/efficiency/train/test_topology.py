"""Resuming on another topology: a run stopped on one mesh or process count resumes on another
and ends as the uninterrupted run (within float tolerance: sharding changes summation order),
having seen the same tokens."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from efficiency.train.loop import train_and_evaluate
from tests.helpers import (
  ROOT,
  final_params,
  free_port,
  read_metrics,
  tiny_train_config,
  tiny_train_flags,
)

SHARDS = {"data.shards": 2}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("topology_data")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_corpus, data_dir):
  """The uninterrupted run: one process, one device."""
  workdir = tmp_path_factory.mktemp("reference") / "work"
  train_and_evaluate(tiny_train_config(tiny_corpus, data_dir, **SHARDS), workdir)
  return workdir


def _leg(workdir, flags, stop_at=None, devices=1, processes=1, mesh=()):
  """One launch of the run: `processes` train.py processes with `devices` CPU devices each,
  stopped after `stop_at` (or run to the end)."""
  module = ["-m", "tests.train_until", str(stop_at)] if stop_at else ["train.py"]
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  address = f"127.0.0.1:{free_port()}"
  job = lambda i: ([f"--coordinator_address={address}", f"--num_processes={processes}",
                    f"--process_id={i}"] if processes > 1 else [])
  procs = [
      subprocess.Popen([sys.executable, *module, f"--workdir={workdir}", *job(i), *flags,
                        *[f"--config.mesh.{k}={v}" for k, v in mesh]],
                       cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
      for i in range(processes)
  ]
  for proc in procs:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == (143 if stop_at else 0), err[-3000:]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["devices"] == devices * processes and summary["process_count"] == processes
  if stop_at:
    assert summary["checkpoint_step"] == stop_at


def _assert_same_within_tolerance(workdir, reference):
  summary, expected = (json.loads((w / "summary.json").read_text()) for w in (workdir, reference))
  assert summary["status"] == "completed"
  assert summary["tokens_seen"] == expected["tokens_seen"]  # the same batches' tokens
  assert summary["tokens_to_target"] == expected["tokens_to_target"]
  losses = lambda w: {m["step"]: m["loss"] for m in read_metrics(w) if "loss" in m}
  got, want = losses(workdir), losses(reference)
  assert got.keys() == want.keys()
  np.testing.assert_allclose([got[k] for k in sorted(got)], [want[k] for k in sorted(want)],
                             rtol=2e-4)
  assert summary["final_eval_loss"] == pytest.approx(expected["final_eval_loss"], rel=2e-4)
  for x, y in zip(*(jax_leaves(final_params(w)) for w in (workdir, reference)), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-3, atol=2e-5)


def jax_leaves(tree):
  import jax

  return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.slow  # the same restore path as the process test, on three meshes
def test_mesh_8_to_4_to_1_devices(reference, tiny_corpus, data_dir, tmp_path):
  workdir = tmp_path / "work"
  flags = tiny_train_flags(tiny_corpus, data_dir, **SHARDS)
  _leg(workdir, flags, 15, devices=8, mesh=[("data", 2), ("fsdp", 2), ("tensor", 2)])
  _leg(workdir, flags, 30, devices=4, mesh=[("data", 1), ("fsdp", 4)])
  _leg(workdir, flags, devices=1)
  _assert_same_within_tolerance(workdir, reference)


def test_processes_2_to_1_to_2(reference, tiny_corpus, data_dir, tmp_path):
  workdir = tmp_path / "work"
  flags = tiny_train_flags(tiny_corpus, data_dir, **SHARDS)
  _leg(workdir, flags, 15, processes=2)
  _leg(workdir, flags, 30, processes=1)
  _leg(workdir, flags, processes=2)
  _assert_same_within_tolerance(workdir, reference)
