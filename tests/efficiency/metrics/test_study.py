"""The study's metrics on synthetic traces equal hand-computed values."""

import pytest

from efficiency.metrics import study
from efficiency.metrics.study import Iteration, Sample


def test_amu_is_sample_and_hold_time_average():
  # 2 GB for 1 s, then 6 GB for 3 s: (2*1 + 6*3) / 4 = 5 GB. The last sample only ends the trace.
  trace = [Sample(10.0, 2e9), Sample(11.0, 6e9), Sample(14.0, 100e9)]
  assert study.amu(trace) == pytest.approx(5e9)


def test_pcu_and_aec_skip_unmeasured_samples():
  trace = [Sample(0.0, utilization=0.5, power_w=None), Sample(2.0, utilization=None),
           Sample(3.0, utilization=0.2), Sample(4.0, utilization=0.9)]
  # utilization known at t=0 (0.5), t=3 (0.2), t=4: (0.5*3 + 0.2*1) / 4 = 0.425
  assert study.pcu(trace) == pytest.approx(0.425)
  assert study.aec(trace) is None


def test_al_tt_st_it_mcr():
  iterations = [Iteration(0.5, tokens=1000, samples=4), Iteration(1.5, tokens=3000, samples=12)]
  assert study.al(iterations) == pytest.approx(1.0)
  # (1000/100 + 3000/100) / (0.5 + 1.5) = 40 / 2 = 20 tokens per parameter per second
  assert study.tt(iterations, params=100) == pytest.approx(20.0)
  assert study.st(iterations, params=4) == pytest.approx(2.0)  # (1 + 3) / 2
  assert study.it(generated_tokens=300, seconds=4.0) == pytest.approx(75.0)
  # The study's example: int4 (4x smaller) at accuracy 0.4361 vs 0.4719.
  assert study.mcr(4.0, 1.0, 0.4719, 0.4361) == pytest.approx(3.70, abs=0.005)
