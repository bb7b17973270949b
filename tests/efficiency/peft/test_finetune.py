"""End-to-end fine-tuning with train.py: init_from, summary fields, resume, merge, CLI errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficiency.peft.merge import merge
from efficiency.workdir.restore import restore
from tests.helpers import ROOT, final_params, random_packed_batch, run_train, tiny_train_flags


def finetune_flags(corpus: Path, data_dir: Path, pretrained: Path, **overrides) -> list[str]:
  values = {"init_from": str(pretrained), "data.name": "stdlib", "steps": 6,
            "checkpoint_every": 3, "eval_every": 3, "peft.method": "dora", "peft.rank": 2}
  values.update(overrides)
  return ["--config=configs/finetune.py", *tiny_train_flags(corpus, data_dir, **values)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_corpus) -> dict[str, Path]:
  """A tiny pretrained run and a DoRA fine-tune of it."""
  root = tmp_path_factory.mktemp("peft_runs")
  data_dir = root / "data"
  pretrained, finetuned = root / "pre", root / "ft"
  run_train(pretrained, tiny_train_flags(tiny_corpus, data_dir, steps=6, eval_every=6,
                                         checkpoint_every=6))
  run_train(finetuned, finetune_flags(tiny_corpus, data_dir, pretrained))
  return {"pre": pretrained, "ft": finetuned, "data": data_dir}


def _logits(trained, tokens) -> np.ndarray:
  segments, positions = jnp.ones_like(tokens), jnp.broadcast_to(jnp.arange(16), tokens.shape)
  apply = jax.jit(lambda p: trained.model.apply({"params": p}, tokens, segments, positions))
  return np.asarray(apply(trained.params))


def test_summary_counts_trainable_parameters_and_optimizer_state(runs):
  summary = json.loads((runs["ft"] / "summary.json").read_text())
  assert summary["status"] == "completed" and summary["steps"] == 6
  assert summary["peft_method"] == "dora" and summary["init_from"] == str(runs["pre"])
  assert 0 < summary["trainable_param_count"] < summary["param_count"] / 5
  assert 8 * summary["trainable_param_count"] <= summary["optimizer_state_bytes"]
  assert summary["optimizer_state_bytes"] <= 8 * summary["trainable_param_count"] + 64


def test_resumed_finetune_equals_uninterrupted(runs, tiny_corpus, tmp_path):
  """Drop the last checkpoint and the summary, rerun: it resumes at step 3 and ends identical."""
  resumed = tmp_path / "ft"
  shutil.copytree(runs["ft"], resumed)
  shutil.rmtree(resumed / "checkpoints" / "6")
  (resumed / "summary.json").unlink()
  run_train(resumed, finetune_flags(tiny_corpus, runs["data"], runs["pre"]))
  assert json.loads((resumed / "summary.json").read_text())["resumed_from_step"] == 3
  jax.tree.map(np.testing.assert_array_equal, final_params(resumed), final_params(runs["ft"]))


def test_merged_checkpoint_loads_without_peft_and_equals_adapter_model(runs, tmp_path):
  merged_dir = merge(runs["ft"], tmp_path / "merged")
  config = json.loads((merged_dir / "config.json").read_text())
  assert "peft" not in config and "init_from" not in config
  adapter, merged, base = (restore(d) for d in (runs["ft"], merged_dir, runs["pre"]))
  assert merged.step == adapter.step == 6
  tokens = jnp.asarray(random_packed_batch(np.random.default_rng(0), 2, 16, 97)[0])
  np.testing.assert_allclose(_logits(merged, tokens), _logits(adapter, tokens), atol=1e-6)
  assert np.abs(_logits(adapter, tokens) - _logits(base, tokens)).max() > 1e-4  # it trained


@pytest.mark.parametrize("flag,message", [
    ("--config.peft.method=qlora",
     "error: peft.method='qlora' is invalid; valid choices: ['dora', 'freeze', 'full', 'lora', "
     "'lora_plus', 'pissa', 'rslora']"),
    ("--config.peft.targets=mlp/*,qkv",
     "error: peft.targets pattern 'qkv' matches nothing; matchable projections: "
     "['layers/attn/query', 'layers/attn/key', 'layers/attn/value', 'layers/attn/out', "
     "'layers/mlp/gate', 'layers/mlp/up', 'layers/mlp/down']"),
])
def test_bad_method_or_target_is_one_line_error(flag, message, tmp_path):
  proc = subprocess.run(
      [sys.executable, "train.py", f"--workdir={tmp_path}", "--config=configs/finetune.py", flag],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
  )
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == message
