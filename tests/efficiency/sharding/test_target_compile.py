"""Compiled for the chips the framework targets, without them: small train steps for 4 TPU v5e
chips (libtpu's compiler) and 2 H100s (XLA's GPU compiler) with the kernel `auto` picks there,
each fused kernel run per device under `shard_map` (its inputs never gathered).

The compiles run in one child process per target (tests/compile_targets.py); libtpu's turn is
taken with `libtpu_lock()`.
"""

import functools
import json
import os
import subprocess
import sys

import pytest

from efficiency.errors import ConfigError
from efficiency.sharding import topology
from efficiency.train.plan import compile_error
from tests.helpers import ROOT, libtpu_lock

TPU, GPU = "v5e:2x2", "h100:2"
# The default suite's cases (seconds each); the rest of the list is slow.
FAST = {TPU: ("gqa_fsdp", "gqa_data_tensor", "moe_expert"), GPU: ("gqa_fsdp", "pallas_fsdp")}
SLOW = {TPU: ("mla", "nsa", "sliding", "int8", "peft_lora", "decode"),
        GPU: ("gqa_data_tensor", "mla", "nsa", "sliding", "moe_expert", "int8", "peft_lora",
              "decode")}
AUTO_KERNEL = {TPU: "splash_tpu", GPU: "cudnn"}
FUSED = ("splash_tpu", "cudnn", "pallas_gpu")


@functools.cache
def compile_cases(target: str, cases: tuple[str, ...]) -> dict[str, dict]:
  """Each case's result line from one child process compiling them for `target`."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  with libtpu_lock():
    proc = subprocess.run(
        [sys.executable, "-m", "tests.compile_targets", target, ",".join(cases)], cwd=ROOT,
        env=env, capture_output=True, text=True, timeout=900,
    )
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
  return {line.pop("case"): line for line in lines}


def check_case(result: dict, target: str, case: str) -> None:
  assert result["compiled"], result.get("error")
  impl = result.get("attention_impl")
  if case in ("gqa_fsdp", "gqa_data_tensor", "moe_expert", "int8", "peft_lora", "sliding"):
    assert impl == AUTO_KERNEL[target], result
  if impl in FUSED:
    assert result["kernel_calls"] > 0
    # Each kernel call sees one device's rows (and heads): nothing was all-gathered for it.
    assert 0 < result["kernel_operand_elements"] <= result["kernel_operand_bound"], result


@pytest.mark.parametrize("target,case", [(t, c) for t in FAST for c in FAST[t]])
def test_compiles_for_target(target, case):
  check_case(compile_cases(target, FAST[target])[case], target, case)


@pytest.mark.slow
@pytest.mark.parametrize("target,case", [(t, c) for t in SLOW for c in SLOW[t]])
def test_compiles_for_target_slow(target, case):
  check_case(compile_cases(target, SLOW[target])[case], target, case)


def test_moe_shards_experts_and_rows_over_the_expert_axis():
  result = compile_cases(TPU, FAST[TPU])["moe_expert"]
  assert result["mesh"]["expert"] == 2 and result["attention_impl"] == "splash_tpu"


@pytest.mark.parametrize("name,platform,count", [
    ("v5e:2x2", "tpu", 4), ("v5p:2x2x2", "tpu", 8), ("v6e:2x4", "tpu", 8), ("h200:8", "gpu", 8),
])
def test_topology_names(name, platform, count):
  chip, n = topology.parse(name)
  assert (chip.platform, n) == (platform, count)


def test_missing_or_mismatched_compilers_are_one_line(monkeypatch):
  chip, _ = topology.parse("v5e:2x2")
  monkeypatch.setattr(topology, "_version", lambda dist: None)
  with pytest.raises(ConfigError, match=r"needs libtpu==0\.0\.42\.1"):
    topology.check_compiler("v5e:2x2", chip)
  with pytest.raises(ConfigError, match="needs jax's CUDA plugin"):
    topology.check_compiler("h100:8", topology.parse("h100:8")[0])
  monkeypatch.setattr(topology, "_version", lambda dist: "0.0.1")
  with pytest.raises(ConfigError, match=r"libtpu 0\.0\.1 does not match jax"):
    topology.check_compiler("v5e:2x2", chip)


def test_a_second_libtpu_user_is_one_line(tmp_path):
  """Another process holding libtpu's lockfile: evals.plan waits --lock_wait_s, then names it."""
  holder = subprocess.Popen(
      [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
       "fcntl.lockf(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
       str(tmp_path / "libtpu_lockfile")], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    proc = subprocess.run(
        [sys.executable, "-m", "evals.plan", "--topology=v5e:2x2", "--lock_wait_s=0"], cwd=ROOT,
        env=dict(os.environ, TMPDIR=str(tmp_path)), capture_output=True, text=True, timeout=120)
  finally:
    holder.kill()
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: --topology=v5e:2x2: libtpu is in use by process "), last
  assert str(holder.pid) in last and "--lock_wait_s" in last


@pytest.mark.parametrize("message,line", [
    ("RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used 23.9G of 15.75G hbm. "
     "Exceeded hbm capacity by 8.1G.", "out of memory: needs 23.9G per chip, 15.75G available"),
    ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory on HBM, total "
     "(193.2G) exceeds available HBM (15.75G)",
     "out of memory: needs 193.2G per chip, 15.75G available"),
    ("INTERNAL: custom_partitioner: Traceback (most recent call last):\n  File \"x.py\"\n"
     "ValueError: Query, key and value should have same sharding.",
     "RuntimeError: ValueError: Query, key and value should have same sharding."),
])
def test_compile_failures_are_one_line_with_the_reason(message, line):
  assert compile_error(RuntimeError(message)) == line
