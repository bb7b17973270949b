"""Exactness of speculative decoding and CoS: acceptance math, sampled distributions against the
analytic target, greedy identity with the baseline, and clear errors."""

import ml_collections
import numpy as np
import pytest
from scipy import stats

from efficiency.errors import ConfigError
from efficiency.serving.generate import generate
from efficiency.serving.loading import check_same_tokenizer
from efficiency.serving.sampling import Sampling
from efficiency.serving.targets import Contrastive, Single, WeightedEnsemble
from tests.efficiency.serving import exactness
from tests.efficiency.serving.reference import Engine, accept_or_resample, residual
from tests.helpers import tiny_model

VOCAB = 4
K = 2  # the first K generated tokens are compared with the analytic target (VOCAB**K cells)
SAMPLES = 2000
ALPHA = exactness.ALPHA
PROMPT = np.array([1, 3, 2], np.int32)


def analytic(collab, members, k: int = K) -> np.ndarray:
  return exactness.analytic(collab, members, PROMPT, k, VOCAB)


def chi_square_p(samples: list[tuple[int, ...]], expected_probs: np.ndarray) -> float:
  return exactness.chi_square_p(samples, expected_probs, K, VOCAB)


def run_many(engine: Engine, method: str, gamma: int, proposer: int = 0, seed: int = 0):
  rng = np.random.default_rng(seed)
  samples, verified, accepted = [], 0, 0
  for _ in range(SAMPLES):
    tokens, st = engine.decode(PROMPT, K, rng, method, gamma, proposer=proposer)
    samples.append(tuple(int(t) for t in tokens))
    verified, accepted = verified + st.verified, accepted + st.accepted
  return samples, accepted / max(verified, 1)


def test_acceptance_and_residual_give_exactly_r():
  """P(x) = q(x) min(1, r(x)/q(x)) + P(reject) residual(x) equals r(x), including zeros and
  one-hot (greedy) distributions."""
  rng = np.random.default_rng(0)
  pairs = [(rng.dirichlet(np.ones(7) * a), rng.dirichlet(np.ones(7) * a)) for a in (0.1, 1, 10)
           for _ in range(50)]
  pairs += [(np.eye(7)[2], np.eye(7)[2]), (np.eye(7)[2], np.eye(7)[5]),
            (np.eye(7)[1], rng.dirichlet(np.ones(7))), (rng.dirichlet(np.ones(7)), np.eye(7)[4])]
  for r, q in pairs:
    keep = np.where(q > 0, q * np.minimum(1, r / np.where(q > 0, q, 1)), 0)
    np.testing.assert_allclose(keep + (1 - keep.sum()) * residual(r, q), r, atol=1e-12)


def test_accept_or_resample_samples_r():
  rng = np.random.default_rng(1)
  r, q = np.array([0.5, 0.1, 0.3, 0.1]), np.array([0.1, 0.6, 0.1, 0.2])
  draws = [accept_or_resample(r, q, int(rng.choice(4, p=q)), rng)[1] for _ in range(20000)]
  observed = np.bincount(draws, minlength=4)
  assert stats.chisquare(observed, r * len(draws)).pvalue > ALPHA
  assert stats.chisquare(observed, q * len(draws)).pvalue < 1e-9  # the test can tell q from r


SAMPLED = Sampling(temperature=1.0)


def we_case(n: int):
  weights = {2: (0.5, 0.5), 3: (0.5, 0.3, 0.2)}[n]
  return WeightedEnsemble(weights, SAMPLED), [tiny_model(s) for s in range(n)]


def cd_case():
  expert, amateur = tiny_model(0, layers=2), tiny_model(1)
  return Contrastive(0.5, Sampling(temperature=1.0, top_k=3)), [expert, amateur]


# gamma 1 reaches every path (draft, rejection, bonus or carried proposal) within K = 2 tokens.
CASES = {
    "we-naive": (lambda: we_case(2), "naive", 1, 0),
    "we-cos": (lambda: we_case(2), "cos", 1, 0),
    "we3-cos": (lambda: we_case(3), "cos", 1, 0),
    "cd-naive": (cd_case, "naive", 2, 1),
    "cd-cos": (cd_case, "cos", 1, 1),
}
SLOW_CASES = ("we-naive", "we3-cos", "cd-cos")


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_CASES else n for n in CASES]
)
def test_cos_matches_collaborative_distribution(name):
  make, method, gamma, proposer = CASES[name]
  collab, members = make()
  engine = Engine(collab, members, max_len=64)
  samples, acceptance = run_many(engine, method, gamma, proposer)
  assert 0.2 < acceptance < 0.95, acceptance  # both the accept and the reject path ran
  assert chi_square_p(samples, analytic(collab, members)) > ALPHA
  # The same samples are far from what the proposer alone would generate.
  own = analytic(Single(SAMPLED), [members[proposer]])
  assert chi_square_p(samples, own) < 1e-6


def test_speculative_matches_target_distribution():
  target, draft = tiny_model(0, layers=2), tiny_model(1)
  sampling = Sampling(temperature=0.8, top_p=0.9)
  engine = Engine(Single(sampling), [target], max_len=64, draft=draft, draft_sampling=sampling)
  samples, acceptance = run_many(engine, "naive", 1)
  assert 0.2 < acceptance < 0.95, acceptance
  assert chi_square_p(samples, analytic(Single(sampling), [target])) > ALPHA
  assert chi_square_p(samples, analytic(Single(sampling), [draft])) < 1e-6


GREEDY = Sampling(temperature=0.0)


@pytest.mark.parametrize("collab_name", ["we", "cd"])
def test_greedy_cos_is_token_identical_to_standard(collab_name):
  members = [tiny_model(0, vocab=11), tiny_model(1, vocab=11)]
  collab = WeightedEnsemble((0.5, 0.5), GREEDY) if collab_name == "we" else Contrastive(0.1, GREEDY)
  engine = Engine(collab, members, max_len=96)
  rng = np.random.default_rng(0)
  baseline, base_stats = engine.decode(PROMPT, 24, rng, "standard")
  assert len(baseline) == 24 and base_stats.calls == [23, 23]  # the first token is the prefill's
  for method, gamma in [("naive", 3), ("cos", 1), ("cos", 4)]:
    tokens, st = engine.decode(PROMPT, 24, rng, method, gamma, proposer=1)
    np.testing.assert_array_equal(tokens, baseline, err_msg=f"{method} gamma={gamma}")
    assert st.verified > 0


def test_greedy_speculative_is_token_identical_to_target():
  target, draft = tiny_model(0, vocab=11, layers=2), tiny_model(1, vocab=11)
  prompts = [PROMPT, np.array([4, 4, 7, 1, 9], np.int32)]
  expected = generate(*target, prompts, 20, GREEDY, eos_id=None)
  engine = Engine(Single(GREEDY), [target], max_len=96, draft=draft, draft_sampling=GREEDY)
  for prompt, want in zip(prompts, expected, strict=True):
    got, st = engine.decode(prompt, 20, np.random.default_rng(0), "naive", gamma=4)
    np.testing.assert_array_equal(got, want)
    assert st.calls[0] < 20  # the target ran fewer times than tokens


def test_clear_errors():
  with pytest.raises(ConfigError, match="different vocabularies"):
    Engine(WeightedEnsemble((0.5, 0.5), SAMPLED), [tiny_model(0), tiny_model(1, vocab=5)], 32)
  with pytest.raises(ConfigError, match="sum to 1"):
    WeightedEnsemble((0.5, 0.6), SAMPLED)
  with pytest.raises(ConfigError, match=">= 0"):
    WeightedEnsemble((1.5, -0.5), SAMPLED)
  engine = Engine(Single(SAMPLED), [tiny_model(0)], 32)
  with pytest.raises(ConfigError, match="gamma=0"):
    engine.decode(PROMPT, 4, np.random.default_rng(0), "naive", gamma=0)
  with pytest.raises(ConfigError, match="valid choices"):
    engine.decode(PROMPT, 4, np.random.default_rng(0), "parallel")
  with pytest.raises(ConfigError, match="top_p"):
    Sampling(top_p=0.0)
  config = ml_collections.ConfigDict({"data": {"tokenizer": "sentencepiece", "name": "stdlib"},
                                      "model": {"vocab_size": 4096}})
  other = ml_collections.ConfigDict(config.to_dict())
  other.model.vocab_size = 2048
  check_same_tokenizer([config, config], ["a", "b"])
  with pytest.raises(ConfigError, match="vocab_size=2048"):
    check_same_tokenizer([config, other], ["a", "b"])
