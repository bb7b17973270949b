"""evals.plan: the memory plan of a job on simulated devices."""

import pytest

from tests.helpers import run_module


@pytest.mark.parametrize("fsdp", [pytest.param(2, marks=pytest.mark.slow), 8])
def test_parameter_and_optimizer_bytes_shrink_as_one_over_fsdp(fsdp):
  """The 0.5B shape on 8 simulated devices, from the shardings alone."""
  plan = run_module("evals.plan", "--config=configs/efficientllm.py:0.5b", "--devices=8",
                    f"--config.mesh.fsdp={fsdp}", "--config.mesh.data=-1", "--compile=false")
  assert plan["mesh"]["fsdp"] == fsdp and plan["devices"] == 8
  params, optimizer = (plan["per_device_bytes"][k] for k in ("params", "optimizer_state"))
  full = plan["param_count"] * 4  # float32 master weights
  assert params == pytest.approx(full / fsdp, rel=0.05)
  assert optimizer == pytest.approx(2 * full / fsdp, rel=0.05)  # AdamW's two moments


def test_compiled_plan_reports_xla_memory_and_the_chips_it_fits():
  plan = run_module("evals.plan", "--devices=2", "--config.mesh.fsdp=2", "--config.mesh.data=1")
  sizes = plan["per_device_bytes"]
  assert sizes["temp"] > 0 and sizes["arguments"] >= sizes["params"] + sizes["optimizer_state"]
  assert sizes["peak_estimate"] == (sizes["arguments"] + sizes["outputs"] - sizes["aliased"]
                                    + sizes["temp"])
  assert plan["fits"] is None  # no target chip
  assert all(plan["fits_on"].values())  # the default 4M-parameter model fits every chip
  assert plan["step_flops_per_device"] > 0
