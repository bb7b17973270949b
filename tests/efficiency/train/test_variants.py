"""Every attention variant, position encoding and MoE trains: a few in-process steps each, and one
train.py run of MLA + ALiBi + MoE writing the new metrics and summary fields."""

import json
import subprocess
import sys

import numpy as np
import pytest

from configs.default import get_config
from efficiency.config import override, resolve
from efficiency.sweep import expand, load_sweep_file
from tests.helpers import ROOT, packed_batch, run_steps, tiny_config, tiny_train_flags

# Each attention once and each position once (pairs keep the suite short); MoE rides along.
COMBINATIONS = [
    ("mha", "rope", 0), ("mqa", "sinusoidal", 0), ("gqa", "learned", 4),
    pytest.param("mla", "relative", 0, marks=pytest.mark.slow),  # mla also in the train.py test
    ("nsa", "alibi", 0), pytest.param("sliding", "none", 4, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("attention, position, experts", COMBINATIONS)
def test_variant_trains(rng, attention, position, experts):
  config = tiny_config(steps=4)
  config.model.update(attention=attention, position=position)
  config.model.sliding.window = 6
  config.model.mla.update(kv_latent_dim=8, q_latent_dim=12, rope_dim=4, qk_head_dim=8,
                          v_head_dim=8)
  config.model.nsa.update(block_size=4, stride=2, select_size=4, top_n=2, window=6)
  config.model.moe.update(num_experts=experts, bias_rate=0.01)
  config.optimizer.lr = 1e-2
  config = resolve(config, num_devices=1)
  batch = packed_batch(rng, config)
  state, losses = run_steps(config, [batch] * 4)
  assert np.all(np.isfinite(losses))
  assert losses[-1] < losses[0] - 0.2  # it learns the repeated batch
  if experts:  # the balancing bias moved by +-0.01 per step, outside the gradient and decay
    bias = np.asarray(state.params["layers"]["moe"]["balance"]["bias"])
    steps = np.round(bias / 0.01)
    assert np.abs(bias).max() > 0 and np.abs(steps).max() <= 4
    np.testing.assert_allclose(bias, steps * 0.01, atol=1e-6)


def test_train_py_mla_alibi_moe(tmp_path, tiny_corpus):
  workdir = tmp_path / "run"
  flags = tiny_train_flags(
      tiny_corpus, tmp_path / "data", steps=10, eval_every=5, checkpoint_every=10,
      **{"model.attention": "mla", "model.position": "alibi", "model.moe.num_experts": 4,
         "model.moe.shared_experts": 1, "model.moe.router": "topk_softmax",
         "model.mla.kv_latent_dim": 8, "model.mla.q_latent_dim": 16, "model.mla.rope_dim": 4,
         "model.mla.qk_head_dim": 8, "model.mla.v_head_dim": 8},
  )
  proc = subprocess.run(
      [sys.executable, "train.py", f"--workdir={workdir}", *flags],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["status"] == "completed"
  assert summary["kv_cache_bytes_per_token"] == 2 * (8 + 4) * 4  # 2 layers, latent + rope, f32
  train_rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_rows = [r for r in train_rows if "loss" in r]
  assert train_rows and all(r["moe_aux_loss"] > 0.5 and r["moe_dropped"] == 0 for r in train_rows)
  assert all(1 <= r["moe_load_max"] <= 4 for r in train_rows)
  assert summary["moe_load_max"] == train_rows[-1]["moe_load_max"]


def test_attention_position_sweep_covers_every_pair():
  """The sweep file expands to all 36 attention x position points, each a valid config."""
  sweep = load_sweep_file(str(ROOT / "configs/sweeps/attention_position.py"))
  points = expand(sweep)
  assert len(points) == 36 and len({p.name for p in points}) == 36
  for point in points:
    config = get_config()
    for field, value in {**sweep["overrides"], **point.overrides}.items():
      override(config, field, value)
    resolve(config, num_devices=1)
