"""Collaborative decoding on device: CoS and standard emit tokens distributed as the enumerated
collaborative target r (chi-square per prompt, rows of different prompt lengths in one batch;
each test also rejects the proposer's own distribution), for two and three models and with one
proposal length per model, and at temperature 0 both equal the host engine's standard
collaborative decoding token for token at batch 1 and 4."""

import numpy as np
import pytest

from efficiency.errors import ConfigError
from efficiency.serving.collaborate import collaborate
from efficiency.serving.sampling import Sampling
from efficiency.serving.targets import Contrastive, Single, WeightedEnsemble
from tests.efficiency.serving.exactness import ALPHA, analytic, chi_square_p
from tests.efficiency.serving.reference import Engine
from tests.helpers import tiny_model

VOCAB, K = 4, 2
PROMPTS = [np.array(p, np.int32) for p in ([1, 3, 2], [2], [0, 1, 2, 3, 1], [3, 3])]
ROWS = 600
SAMPLED = Sampling(temperature=1.0)


def we_case():
  return WeightedEnsemble((0.5, 0.5), SAMPLED), [tiny_model(0), tiny_model(1)], 0


def we3_case():
  collab = WeightedEnsemble((0.5, 0.3, 0.2), SAMPLED)
  return collab, [tiny_model(0), tiny_model(1), tiny_model(2, layers=2)], 1


def cd_case():
  collab = Contrastive(0.5, Sampling(temperature=1.0, top_k=3))
  return collab, [tiny_model(0, layers=2), tiny_model(1)], 1


# gamma 1 reaches every path within K = 2 tokens: rejection + residual, all kept + a carried
# proposal, and a carried proposal verified (kept or rejected) in the next round.
# With three models, gamma 1 and K = 2 reach the same paths with each model as proposer.
# Proposal lengths (2, 1) over K = 3 tokens: model 0 drafts two (rejected at either, or both
# kept and model 1's sample carried); after a rejection of the first, model 1 proposes one.
CASES = {"we-cos": (we_case, "cos", 1, K), "cd-cos": (cd_case, "cos", 1, K),
         "we3-cos": (we3_case, "cos", 1, K), "we-standard": (we_case, "standard", 1, K),
         "we-cos-per-model": (lambda: (*we_case()[:2], 0), "cos", (2, 1), 3)}


@pytest.mark.parametrize("name", [
    "we-cos", "cd-cos", "we3-cos", "we-cos-per-model",
    pytest.param("we-standard", marks=pytest.mark.slow)])
def test_output_follows_collaborative_distribution(name):
  make, method, gamma, k = CASES[name]
  collab, members, proposer = make()
  batch = [p for p in PROMPTS for _ in range(ROWS)]
  out = collaborate(collab, members, batch, k, method, None, gamma=gamma, proposer=proposer,
                    seed=4)
  if method == "cos":
    assert 0.2 < out.acceptance < 0.95, out.acceptance
  for i, prompt in enumerate(PROMPTS):
    samples = [tuple(int(t) for t in x) for x in out.tokens[i * ROWS : (i + 1) * ROWS]]
    want = analytic(collab, members, prompt, k, VOCAB)
    assert chi_square_p(samples, want, k, VOCAB) > ALPHA, i
    own = analytic(Single(collab.sampling), [members[proposer]], prompt, k, VOCAB)
    assert chi_square_p(samples, own, k, VOCAB) < 1e-6, i  # the test can fail


GREEDY = Sampling(temperature=0.0)
LONG = [np.array(p, np.int32) for p in ([1, 3, 2], [4, 4, 7, 1, 9], [5], [2, 6, 6, 1, 0, 3, 7])]


@pytest.fixture(scope="module")
def members():
  return [tiny_model(0, vocab=11), tiny_model(1, vocab=11)]


COLLABS = {"we": WeightedEnsemble((0.5, 0.5), GREEDY), "cd": Contrastive(0.1, GREEDY),
           "we3": WeightedEnsemble((0.4, 0.35, 0.25), GREEDY)}


@pytest.mark.parametrize("kind", [
    "we", pytest.param("we3", marks=pytest.mark.slow), pytest.param("cd", marks=pytest.mark.slow)])
def test_greedy_equals_host_standard(kind, members):
  collab = COLLABS[kind]
  if kind == "we3":
    members = [*members, tiny_model(2, vocab=11, layers=2)]
  engine = Engine(collab, members, max_len=96)
  expected = [engine.decode(p, 16, np.random.default_rng(0), "standard")[0] for p in LONG]
  runs = [("standard", LONG, 1, 0), ("cos", LONG, (3, 1), 1), ("cos", LONG[1:2], 3, 0)]
  if kind == "we3":  # standard and batch 1 are the same code for any number of models
    runs = [("cos", LONG, 2, 2)]
  for method, prompts, gamma, proposer in runs:
    out = collaborate(collab, members, prompts, 16, method, None, gamma, proposer)
    want = expected if len(prompts) == len(LONG) else expected[1:2]
    for got, w in zip(out.tokens, want, strict=True):
      np.testing.assert_array_equal(got, w, err_msg=f"{method} batch {len(prompts)}")
  assert out.verified > 0


def test_clear_errors(members):
  collab = WeightedEnsemble((0.5, 0.3, 0.2), GREEDY)
  with pytest.raises(ConfigError, match="method=cos needs 2 or more models; got 1"):
    collaborate(Single(GREEDY), members[:1], LONG, 4, "cos", None)
  with pytest.raises(ConfigError, match="valid choices"):
    collaborate(WeightedEnsemble((0.5, 0.5), GREEDY), members, LONG, 4, "parallel", None)
  with pytest.raises(ConfigError, match="2 models given; the target needs 3"):
    collaborate(collab, members, LONG, 4, "standard", None)
  pair = WeightedEnsemble((0.5, 0.5), GREEDY)
  with pytest.raises(ConfigError, match=r"gamma=\[1, 2, 3\] gives 3 proposal lengths for 2"):
    collaborate(pair, members, LONG, 4, "cos", None, gamma=(1, 2, 3))
  with pytest.raises(ConfigError, match="gamma=0 must be >= 1"):
    collaborate(pair, members, LONG, 4, "cos", None, gamma=(0, 2))
