"""A diverging run stops as `diverged` naming the step, keeps only finite checkpoints and writes
its non-finite metrics as strings; with on_nonfinite=skip a non-finite step changes nothing."""

import json

import jax
import numpy as np
import pytest

from efficiency.errors import DivergedError
from efficiency.sharding.mesh import to_global
from efficiency.train.loop import train_and_evaluate
from efficiency.train.setup import Training
from efficiency.workdir import files
from efficiency.workdir.runs import load_run
from tests.helpers import final_params, packed_batch, tiny_config, tiny_train_config


def _all_finite(tree) -> bool:
  return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree))


def test_divergence_stops_the_run_and_keeps_finite_checkpoints(tiny_corpus, fault_data_dir,
                                                               tmp_path):
  config = tiny_train_config(tiny_corpus, fault_data_dir, **{"optimizer.lr": 1e4,
                                                             "checkpoint_every": 5})
  workdir = tmp_path / "work"
  with pytest.raises(DivergedError, match=r"is (nan|inf) at step \d+; newest finite checkpoint"):
    train_and_evaluate(config, workdir)
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["status"] == "diverged" and summary["steps"] < 40
  if files.checkpoint_steps(workdir):
    assert _all_finite(final_params(workdir))
  raw = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  written = {m["loss"] for m in raw if "loss" in m and isinstance(m["loss"], str)}
  assert written and written <= {"nan", "inf", "-inf"}
  assert any(np.isnan(r["loss"]) or np.isinf(r["loss"]) for r in load_run(workdir).train_records)
  assert not (workdir / "lock").exists()


def test_skip_policy_skips_nonfinite_steps_and_counts_them():
  config = tiny_config(on_nonfinite="skip", max_nonfinite_skips=2)
  training = Training(config)
  state = training.init(seed=0)
  rng = np.random.default_rng(0)
  good = packed_batch(rng, config)
  bad = {**good, "weights": np.full_like(good["weights"], np.nan)}
  before = jax.device_get(state.params)
  state, metrics = training.train_step(state, to_global(bad, training.rows_sharding))
  assert int(metrics["skipped_steps"]) == 1 and int(metrics["consecutive_skips"]) == 1
  after = jax.device_get(state.params)
  for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
    np.testing.assert_array_equal(x, y)
  state, metrics = training.train_step(state, to_global(good, training.rows_sharding))
  assert int(metrics["skipped_steps"]) == 1 and int(metrics["consecutive_skips"]) == 0
  assert np.isfinite(float(metrics["loss"])) and _all_finite(state.params)


@pytest.mark.slow  # the guard's skip branch; the unit test above covers the skipping itself
def test_skip_policy_stops_after_too_many_skips_in_a_row(tiny_corpus, fault_data_dir, tmp_path):
  config = tiny_train_config(tiny_corpus, fault_data_dir, on_nonfinite="skip",
                             max_nonfinite_skips=3, **{"optimizer.lr": 1e4})
  with pytest.raises(DivergedError, match="steps in a row"):
    train_and_evaluate(config, tmp_path / "work")
  assert json.loads((tmp_path / "work" / "summary.json").read_text())["status"] == "diverged"
