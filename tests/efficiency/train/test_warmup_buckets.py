"""Bucketed sequence-length warmup in training: a bucketed step equals the masked one, a run
compiles once per bucket, counts each step's FLOPs at its row length, and resumes exactly."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from data.seq_len_warmup import bucket_lengths, piece_len, split_segments, to_rows
from efficiency.config import resolve
from efficiency.model.flops import flops_per_token
from efficiency.sharding.mesh import to_global
from efficiency.train import loop as loop_lib
from efficiency.train.setup import Training
from efficiency.train.step import summed_loss
from efficiency.workdir import files
from tests.helpers import assert_same_run, packed_batch, tiny_config, tiny_train_config

# Float32 tolerances of a bucketed step against the masked step on the same tokens: the two sum
# the same terms in another order, and attention softmaxes over rows of another length. Gradients
# agree to GRAD_RTOL, or to GRAD_ATOL times the largest magnitude of their leaf.
LOSS_RTOL = 1e-5
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-5

WARMUP = {"data.seq_len_warmup.start": 8, "data.seq_len_warmup.steps": 30}  # seq_len 32: 8, 16


def _training(attention: str = "gqa", position: str = "rope") -> Training:
  """The tiny model in rows of 32 tokens, accumulating gradients over 2 micro-batches."""
  config = tiny_config(seq_len=32, grad_accum_steps=2)
  config.model.update(attention=attention, position=position)
  config.model.sliding.window = 6  # shorter than a 16-token row, longer than a piece of 4
  return Training(resolve(config, 1))


@pytest.fixture(scope="module")
def training() -> Training:
  return _training()


def _loss_and_grads(training: Training, params, batch) -> tuple[float, list[np.ndarray]]:
  grad_fn = jax.jit(jax.grad(summed_loss, has_aux=True), static_argnums=2)
  with training.context():
    global_batch = to_global(batch, training.rows_sharding)
    grads, stats = grad_fn(params, global_batch, training.model, jax.random.key(0))
  return float(stats["loss_sum"] / stats["weight_sum"]), jax.tree.leaves(jax.device_get(grads))


def _assert_same_loss_and_grads(training: Training, piece: int) -> None:
  params = training.init(0).params
  masked = split_segments(packed_batch(np.random.default_rng(1), training.config), piece)
  loss_m, grads_m = _loss_and_grads(training, params, masked)
  loss_b, grads_b = _loss_and_grads(training, params, to_rows(masked, piece))
  np.testing.assert_allclose(loss_b, loss_m, rtol=LOSS_RTOL)
  for g_b, g_m in zip(grads_b, grads_m, strict=True):
    np.testing.assert_allclose(g_b, g_m, rtol=GRAD_RTOL, atol=GRAD_ATOL * np.abs(g_m).max())


def test_bucketed_step_has_the_masked_loss_and_gradients(training):
  _assert_same_loss_and_grads(training, 8)


@pytest.mark.slow
@pytest.mark.parametrize("attention,position", [("sliding", "alibi"), ("mla", "relative"),
                                                ("gqa", "learned"), ("mqa", "sinusoidal")])
def test_bucketed_step_has_the_masked_loss_and_gradients_in_variants(attention, position):
  _assert_same_loss_and_grads(_training(attention, position), 4)


def test_bucketed_train_step_with_micro_batches_matches_masked(training):
  """Through the jitted train step with gradient accumulation over 2 micro-batches: the same
  token count exactly, loss and gradient norm to float tolerance."""
  masked = split_segments(packed_batch(np.random.default_rng(2), training.config), 8)
  metrics = {}
  for name, batch in (("masked", masked), ("bucketed", to_rows(masked, 8))):
    global_batch = to_global(batch, training.rows_sharding)
    _, metrics[name] = training.train_step(training.init(0), global_batch)
  m, b = jax.device_get(metrics["masked"]), jax.device_get(metrics["bucketed"])
  assert float(b["tokens"]) == float(m["tokens"]) == masked["weights"].sum()
  np.testing.assert_allclose(b["loss"], m["loss"], rtol=LOSS_RTOL)
  np.testing.assert_allclose(b["grad_norm"], m["grad_norm"], rtol=GRAD_RTOL)
  assert training._train_step._cache_size() == 2  # one compile per row length


@pytest.fixture(scope="module")
def warmup_data_dir(tmp_path_factory) -> Path:
  return tmp_path_factory.mktemp("warmup_data")


@pytest.fixture(scope="module")
def compiles() -> dict[str, list]:
  """The row lengths each run below compiled its train step for, by run."""
  return {}


def _train(config, workdir: Path, compiles: list) -> dict:
  """train_and_evaluate, recording the row length of every train-step compile."""
  original = Training.compile

  def compile(self, example, seq_len=None):
    compiles.append(seq_len or self.config.seq_len)
    return original(self, example, seq_len)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(Training, "compile", compile)
    return loop_lib.train_and_evaluate(config, workdir)


@pytest.fixture(scope="module")
def warmup_config(tiny_corpus, warmup_data_dir):
  return tiny_train_config(tiny_corpus, warmup_data_dir, **WARMUP)


@pytest.fixture(scope="module")
def warmup_run(tmp_path_factory, warmup_config, compiles) -> Path:
  """An uninterrupted 40-step run with bucketed warmup over its first 30 steps."""
  workdir = tmp_path_factory.mktemp("warmup") / "work"
  _train(warmup_config, workdir, compiles.setdefault("reference", []))
  return workdir


def test_a_warmup_run_compiles_once_per_bucket(warmup_run, warmup_config, compiles):
  used = {piece_len(step, warmup_config) for step in range(warmup_config.steps)}
  assert used == {8, 16, 32} == set(bucket_lengths(32, 8))
  assert sorted(compiles["reference"]) == sorted(used)  # each one once, the full length first
  assert compiles["reference"][0] == 32


def test_flops_count_each_step_at_its_row_length(warmup_run, warmup_config):
  summary = json.loads((warmup_run / "summary.json").read_text())
  per_step = [
      loop_lib.model_step_flops(warmup_config, piece_len(s, warmup_config)) for s in range(40)
  ]
  assert summary["flops_seen"] == sum(per_step)
  assert summary["flops_seen"] < 40 * loop_lib.model_step_flops(warmup_config, 32)
  evals = [json.loads(line) for line in (warmup_run / "metrics.jsonl").read_text().splitlines()]
  first = next(m for m in evals if m.get("eval_loss", np.inf) <= summary["target_loss"])
  assert summary["tokens_to_target"] == first["tokens_seen"]
  assert summary["flops_to_target"] == sum(per_step[: first["step"]])
  assert 0 < summary["time_to_target_s"] < summary["wall_time_s"]
  assert summary["compile_time_s"] > 0


def test_warmup_with_fixed_sequences_trains_short_steps(warmup_run, warmup_config, tmp_path):
  """`fixed=sequences` (Li et al.): the same buckets, each warmup step batch_size rows of its
  piece length, so it trains on and costs batch_size * piece tokens."""
  config = warmup_config.copy_and_resolve_references()
  config.data.seq_len_warmup.fixed = "sequences"
  compiled = []
  summary = _train(config, tmp_path / "work", compiled)
  assert sorted(compiled) == [8, 16, 32]
  pieces = [piece_len(s, config) for s in range(40)]
  per_step = [flops_per_token(config.model, p) * config.batch_size * p for p in pieces]
  assert summary["flops_seen"] == sum(per_step) == sum(
      loop_lib.model_step_flops(config, p) for p in pieces)
  reference = json.loads((warmup_run / "summary.json").read_text())
  assert summary["flops_seen"] < reference["flops_seen"]
  tokens = sum(min(p, 32) for p in pieces) * config.batch_size  # packed rows: all real tokens
  assert summary["tokens_seen"] <= tokens < reference["tokens_seen"]
  assert summary["tokens_seen"] > 0.9 * tokens


def test_resume_mid_warmup_equals_the_uninterrupted_run(
    warmup_run, warmup_config, compiles, tmp_path
):
  """Stopped at the checkpoint of step 20 (pieces of 16 tokens), resumed to step 40."""
  workdir = tmp_path / "work"
  shutil.copytree(warmup_run, workdir)
  shutil.rmtree(workdir / "checkpoints" / "40")
  summary = json.loads((workdir / "summary.json").read_text())
  files.write_json_atomic(workdir / "summary.json", {**summary, "status": "interrupted"})
  resumed = _train(warmup_config, workdir, compiles.setdefault("resumed", []))
  assert resumed["resumed_from_step"] == 20
  assert_same_run(workdir, warmup_run)
  assert resumed["flops_seen"] == summary["flops_seen"]
  assert resumed["flops_to_target"] == summary["flops_to_target"]
  # The target is first reached at the eval of step 20, so its time comes from the checkpoint.
  assert resumed["time_to_target_s"] == summary["time_to_target_s"]
  assert sorted(compiles["resumed"]) == [16, 32]
