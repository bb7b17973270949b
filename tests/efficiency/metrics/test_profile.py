"""Profile windows: the HLO grouping, self-time on nested ops, and a real trace's summary."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficiency.metrics.profile import (
  GROUPS,
  ProfileWindow,
  _self_times,
  classify_hlo,
  classify_name,
  summarize,
  table,
)

# A hand-written module: a fusion that calls a dot, an attention-scoped fusion, an async
# all-reduce, an elementwise fusion, a cuDNN attention call and a while loop.
HLO = """\
HloModule m

%fused_dot (p0: f32[4,4], p1: f32[4,4]) -> f32[4,4] {
  %p0 = f32[4,4]{1,0} parameter(0)
  %p1 = f32[4,4]{1,0} parameter(1)
  ROOT %d = f32[4,4]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_exp (p0: f32[4,4]) -> f32[4,4] {
  %p0 = f32[4,4]{1,0} parameter(0)
  ROOT %e = f32[4,4]{1,0} exponential(%p0)
}

ENTRY %main (a: f32[4,4], b: f32[4,4]) -> f32[4,4] {
  %a = f32[4,4]{1,0} parameter(0)
  %b = f32[4,4]{1,0} parameter(1)
  %fusion.1 = f32[4,4]{1,0} fusion(%a, %b), kind=kOutput, calls=%fused_dot, \
metadata={op_name="jit(step)/mlp/up/dot_general"}
  %fusion.2 = f32[4,4]{1,0} fusion(%a, %b), kind=kOutput, calls=%fused_dot, \
metadata={op_name="jit(step)/layers/attn/dot_general"}
  %all-reduce-start = f32[4,4]{1,0} all-reduce-start(%fusion.1), to_apply=%add
  %fusion.3 = f32[4,4]{1,0} fusion(%fusion.1), kind=kLoop, calls=%fused_exp
  %custom-call.4 = (f32[4,4]{1,0}, u8[0]{0}) custom-call(%a, %b), \
custom_call_target="__cudnn$fmhaSoftmax"
  %while.5 = (f32[4,4]{1,0}) while(%t), condition=%cond, body=%body
  ROOT %copy.6 = f32[4,4]{1,0} copy(%fusion.3)
}
"""


def test_classify_hlo_groups_each_kind_of_op():
  groups = classify_hlo([HLO])
  assert groups["fusion.1"] == "matmul"  # fuses a dot
  assert groups["fusion.2"] == "attention"  # a dot, but in the attention module's scope
  assert groups["all-reduce-start"] == "collective"
  assert groups["fusion.3"] == "elementwise"
  assert groups["custom-call.4"] == "attention"
  assert groups["while.5"] == "other"
  assert groups["copy.6"] == "other"
  assert groups["d"] == "matmul" and groups["e"] == "elementwise"


def test_classify_name_without_hlo():
  assert classify_name("all-gather-start.3") == "collective"
  assert classify_name("ncclAllReduceKernel") == "collective"
  assert classify_name("cutlass_gemm_128x64") == "matmul"
  assert classify_name("flash_attention_fwd") == "attention"
  assert classify_name("loop_add_fusion") == "elementwise"
  assert classify_name("copy.2") == "other"


def test_self_times_subtract_nested_ops_on_a_line():
  # a while loop [0, 100) holding two ops, then an op after it
  ops = [(0, 100, "while", 0), (10, 40, "a", 0), (50, 90, "b", 0), (100, 130, "c", 0)]
  got = {op: t for op, t, _ in _self_times(ops)}
  assert got == {"while": 30, "a": 30, "b": 40, "c": 30}


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
  """A trace of steps 2..4 of a matmul-bound jitted step (with an attention-scoped product)."""

  def step(x_NK, w_KK):
    with jax.named_scope("attn"):
      s_NK = x_NK @ w_KK
    return jnp.tanh(s_NK) @ w_KK

  x = jnp.asarray(np.random.default_rng(0).normal(size=(1024, 1024)), jnp.float32)
  compiled = jax.jit(step).lower(x, x).compile()
  window = ProfileWindow(tmp_path_factory.mktemp("tb"), start=2, steps=3)
  for n in range(1, 6):
    with window.step(n):
      compiled(x, x).block_until_ready()
  return window, compiled


def test_trace_lands_where_tensorboard_reads_it(traced):
  window, _ = traced
  assert window.trace_path is not None and window.trace_path.name.endswith(".xplane.pb")
  assert window.trace_path.parent.parent == window.logdir / "plugins" / "profile"


def test_summary_groups_sum_to_the_traced_step(traced):
  window, compiled = traced
  summary = summarize(window.trace_path, classify_hlo([compiled.as_text()]))
  assert summary["steps"] == 3 and summary["devices"] == 1
  groups = summary["groups"]
  assert set(groups) == set(GROUPS)
  assert sum(g["time_s"] for g in groups.values()) == pytest.approx(summary["op_time_s"])
  # A matmul-bound step: the XLA ops cover the annotated step to within 10%.
  assert summary["op_time_fraction"] == pytest.approx(1.0, abs=0.2)  # 0.1 on a quiet machine
  assert groups["matmul"]["time_s"] > 0 and groups["attention"]["time_s"] > 0
  assert summary["top_group"] in ("matmul", "attention")
  assert summary["top_ops"][0]["time_s"] >= summary["top_ops"][-1]["time_s"]
  text = table(summary)
  assert "matmul" in text and "attention" in text and "step time" in text


def test_window_outside_its_steps_traces_nothing(tmp_path):
  window = ProfileWindow(tmp_path, start=3, steps=0)
  for n in range(1, 4):
    with window.step(n):
      pass
  assert window.trace_path is None and not list(tmp_path.rglob("*.xplane.pb"))


def test_run_profiles_its_window_once_and_never_from_past_its_start(tmp_path):
  from configs.default import get_config
  from efficiency.train.loop import _profile_window
  from efficiency.workdir.summary import Summary

  config = get_config()
  config.profile.start_step, config.profile.steps = 10, 3
  window = _profile_window(config, tmp_path, 0, Summary())
  assert (window.first_traced, window.start, window.last, window.steps) == (9, 10, 12, 3)
  assert _profile_window(config, tmp_path, 8, Summary()).steps == 3  # resumed before it
  assert _profile_window(config, tmp_path, 9, Summary()).steps == 0  # past its lead-in step
  done = {"window": {"start_step": 10, "steps": 3}, "top_group": "matmul",
          "top_group_share": 0.5}
  (tmp_path / "profile_summary.json").write_text(json.dumps(done))
  summary = Summary()
  assert _profile_window(config, tmp_path, 0, summary).steps == 0  # captured already
  assert (summary.top_op_group, summary.top_op_group_share) == ("matmul", 0.5)
