"""The speculation planner: its expectations against a simulation of the decoders' schedules, its
choices on synthetic costs and acceptance (a cheap draft with high acceptance drafts long, equal
costs with low acceptance do not speculate, per-model lengths follow the cost ratio), `auto`
runs exactly the chosen fixed setting (token for token), and the call costs are measured once
per model, shape and device."""

import numpy as np
import pytest

from efficiency.serving import acceptance, collaborate, request, speculative
from efficiency.serving.acceptance import (
  Plan,
  choose_cos,
  choose_speculation,
  cos_rate,
  expected_tokens,
  speculation_rate,
)
from efficiency.serving.generate import run
from efficiency.serving.sampling import Sampling
from efficiency.serving.targets import WeightedEnsemble
from tests.helpers import tiny_model


def linear_costs(step_s: float, per_position_s: float, widths=range(1, 12)) -> dict:
  """Seconds of a call over k positions: a fixed step cost plus a cost per position."""
  return {k: step_s + per_position_s * (k - 1) for k in widths}


def simulate_speculation(a: float, gamma: int, rounds: int, rng) -> float:
  """Tokens per round of speculative decoding, drawn: drafts kept in order with probability a,
  then one residual or bonus token."""
  kept = np.argmin(np.concatenate([rng.random((rounds, gamma)) < a,
                                   np.zeros((rounds, 1), bool)], 1), axis=1)
  return float(np.mean(kept + 1))


def simulate_cos(a: float, gammas: tuple, costs: tuple, rounds: int, rng) -> float:
  """Tokens/s of CoS drawn round by round as `collaborate._cos` runs it: the proposer drafts
  gamma_P after a carried token (if any), others verify, all kept -> the last verifier's sample
  is carried; the last verifier proposes next."""
  n, p, carry, tokens, seconds = len(gammas), 0, 0, 0, 0.0
  for _ in range(rounds):
    m = gammas[p] + carry
    kept = 0
    while kept < m and rng.random() < a:
      kept += 1
    tokens += m if kept == m else kept + 1
    seconds += costs[p][3] + (gammas[p] - 1) * costs[p][1] + sum(
        costs[v][gammas[p] + 2] for v in range(n) if v != p)
    carry, p = int(kept == m), (p - 1) % n
  return tokens / seconds


@pytest.mark.parametrize("a", [0.0, 0.3, 0.8, 1.0])
def test_expectations_match_simulated_schedules(a):
  rng = np.random.default_rng(0)
  for gamma in (1, 4):
    want = simulate_speculation(a, gamma, 20000, rng)
    assert expected_tokens(a, gamma) == pytest.approx(want, rel=0.03)
  costs = (linear_costs(1.0, 0.1), linear_costs(0.2, 0.02), linear_costs(0.5, 0.05))
  for gammas in ((1, 5), (3, 2), (2, 1, 4)):
    n_costs = costs[: len(gammas)]
    assert cos_rate(a, gammas, n_costs) == pytest.approx(
        simulate_cos(a, gammas, n_costs, 20000, rng), rel=0.03), gammas


def test_speculation_rate_counts_the_round_calls():
  target, draft = linear_costs(1.0, 0.1), linear_costs(0.1, 0.01)
  # a = 0.5, gamma 2: 1.75 tokens per round of draft(2) + draft(1) + target(3)
  assert speculation_rate(0.5, 2, target, draft) == pytest.approx(1.75 / (0.11 + 0.1 + 1.2))


def test_cheap_draft_with_high_acceptance_drafts_long():
  plan = choose_speculation(0.9, linear_costs(1.0, 0.01), linear_costs(0.05, 0.001))
  assert plan.gamma == (max(acceptance.GRID),)
  assert plan.predicted_tokens_per_s > 2 * plan.standard_tokens_per_s
  assert choose_speculation(0.6, linear_costs(1.0, 0.01), linear_costs(0.05, 0.001)).gamma[0] < 8
  four = choose_speculation(0.9, linear_costs(1.0, 0.01), linear_costs(0.05, 0.001), rows=4)
  assert four.gamma == plan.gamma and four.standard_tokens_per_s == 4.0  # tokens/s of 4 rows


def test_equal_costs_and_low_acceptance_do_not_speculate():
  same = linear_costs(1.0, 0.05)
  plan = choose_speculation(0.3, same, same)
  assert plan.gamma is None and plan.choice == "standard"
  assert plan.predicted_tokens_per_s == plan.standard_tokens_per_s == 1.0
  assert choose_cos(0.3, (same, same)).gamma is None
  # a call over many positions as costly as a step per position: speculation never pays
  assert choose_speculation(0.9, linear_costs(1.0, 1.0), linear_costs(1.0, 1.0)).gamma is None


def test_per_model_lengths_follow_the_cost_ratio():
  big, small = linear_costs(1.0, 0.02), linear_costs(0.1, 0.002)
  g_big, g_small = choose_cos(0.8, (big, small)).gamma
  assert g_big < g_small
  assert choose_cos(0.8, (small, big)).gamma == (g_small, g_big)
  g_same = choose_cos(0.8, (big, big)).gamma
  assert g_same[0] == g_same[1]


def test_plan_reports_what_it_chose_from():
  costs = (linear_costs(1.0, 0.1, (1, 2)), linear_costs(0.1, 0.01, (1, 2)))
  d = Plan((3,), 2.0, 1.0, 0.7, costs).as_dict()
  assert d["plan"] == [3] and d["acceptance_estimate"] == 0.7
  assert d["call_costs_s"][0] == {"1": 1.0, "2": 1.1}
  assert Plan(None, 1.0, 1.0, 0.1, costs).as_dict()["plan"] == "standard"


PROMPTS = [np.array(p, np.int32) for p in ([1, 3, 2], [4, 4, 7, 1, 9], [5], [2, 6, 6])]


@pytest.fixture(scope="module")
def pair():
  return tiny_model(0, vocab=11, layers=2), tiny_model(1, vocab=11)


@pytest.fixture
def measured(monkeypatch):
  """Counts the calibrations (each a measured call width) and starts from an empty cache."""
  count = {"n": 0}
  measure = request._measure

  def counted(*args):
    count["n"] += 1
    return measure(*args)

  monkeypatch.setattr(request, "_COSTS", {})
  monkeypatch.setattr(request, "_measure", counted)
  return count


def test_speculate_auto_runs_the_chosen_setting(pair, measured):
  target, draft = pair
  sampling = Sampling(1.0)
  grid = (1, 3)
  monkeypatch_grid = pytest.MonkeyPatch()
  monkeypatch_grid.setattr(speculative, "GRID", grid)
  try:
    out = speculative.speculate(target, draft, PROMPTS, 6, sampling, "auto", None, seed=3)
    calibrations = measured["n"]
    target_widths, draft_widths = speculative.speculation_positions(grid)
    assert calibrations == len(request.measured_widths(target_widths)) + len(draft_widths)
    again = speculative.speculate(target, draft, PROMPTS, 6, sampling, "auto", None, seed=3)
    assert measured["n"] == calibrations  # once per model, shape and device
  finally:
    monkeypatch_grid.undo()
  assert out.plan is not None and again.plan.gamma == out.plan.gamma
  if out.plan.gamma is None:
    fixed = run(*target, PROMPTS, 6, sampling, None, seed=3).tokens
  else:
    assert out.gamma == out.plan.gamma[0]
    fixed = speculative.speculate(target, draft, PROMPTS, 6, sampling, out.plan.gamma[0], None,
                                  seed=3).tokens
  assert [t.tolist() for t in out.tokens] == [t.tolist() for t in fixed]
  report = out.report()
  assert report["plan"] in ("standard", list(out.plan.gamma or ()))
  assert report["achieved_tokens_per_s"] > 0 and 0 <= report["acceptance_estimate"] <= 1


def forced(gamma):
  """A planner that picks `gamma` (None: standard) whatever it measured."""
  return lambda a, *costs, grid=None, rows=1: Plan(gamma, 1.0, 1.0, a, ())


def test_collaborate_auto_runs_the_chosen_per_model_lengths(pair, monkeypatch):
  target, draft = pair
  monkeypatch.setattr(collaborate, "choose_cos", forced((1, 2)))
  monkeypatch.setattr(collaborate, "GRID", (1, 2))
  collab = WeightedEnsemble((0.5, 0.5), Sampling(1.0))
  out = collaborate.collaborate(collab, [target, draft], PROMPTS, 5, "cos", None, "auto", seed=1)
  fixed = collaborate.collaborate(collab, [target, draft], PROMPTS, 5, "cos", None, (1, 2),
                                  seed=1)
  assert out.method == "cos" and out.gamma == out.plan.gamma == (1, 2)
  assert [t.tolist() for t in out.tokens] == [t.tolist() for t in fixed.tokens]
  assert out.report()["plan"] == [1, 2]


@pytest.mark.parametrize("choice", [None, (3,)])
def test_speculate_auto_runs_a_forced_choice(pair, monkeypatch, choice):
  """Plain decoding when speculation would not pay, else speculation at the chosen gamma."""
  target, draft = pair
  sampling = Sampling(1.0)
  monkeypatch.setattr(speculative, "choose_speculation", forced(choice))
  monkeypatch.setattr(speculative, "GRID", (1, 3))
  out = speculative.speculate(target, draft, PROMPTS, 5, sampling, "auto", None, seed=1)
  if choice is None:
    assert out.gamma == 0 and out.calls["draft"] == 0 and out.report()["plan"] == "standard"
    fixed = run(*target, PROMPTS, 5, sampling, None, seed=1).tokens
  else:
    assert out.gamma == 3 and out.report()["plan"] == [3]
    fixed = speculative.speculate(target, draft, PROMPTS, 5, sampling, 3, None, seed=1).tokens
  assert [t.tolist() for t in out.tokens] == [t.tolist() for t in fixed]

def test_call_costs_measure_few_widths_once_and_interpolate(monkeypatch):
  seen = []

  def fake(model, params, batch, width, max_len, rollback):
    seen.append(width)
    return 1.0 + 0.5 * width

  monkeypatch.setattr(request, "_COSTS", {})
  monkeypatch.setattr(request, "_measure", fake)
  widths = (1, 2, 3, 5, 7, 9)
  costs = request.call_costs("model", None, 4, widths, 64, 3)
  assert sorted(seen) == [1, 2, 3, 9]
  assert costs == pytest.approx({w: 1.0 + 0.5 * w for w in widths})
  request.call_costs("model", None, 4, widths, 64, 3)
  assert len(seen) == 4  # cached for the process
  request.call_costs("model", None, 8, widths, 64, 3)
  assert len(seen) == 8  # another batch is another shape
