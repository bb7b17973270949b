"""Batched speculative decoding on device: the emitted tokens follow the target's distribution
(chi-square per row against enumeration, rows of different prompt lengths in one batch), greedy
output equals plain generation token for token at batch 1 and 4, a draft equal to the target
keeps every draft, rows stop at their own EOS, and the request is one jitted loop read once."""

import jax
import numpy as np
import pytest

from efficiency.errors import ConfigError
from efficiency.serving import export
from efficiency.serving.generate import generate
from efficiency.serving.sampling import Sampling
from efficiency.serving.speculative import speculate
from efficiency.serving.targets import Single
from tests.efficiency.serving.exactness import ALPHA, analytic, chi_square_p
from tests.helpers import quant_config, tiny_model, trained_model

GREEDY = Sampling(temperature=0.0)
VOCAB, K = 4, 2
PROMPTS = [np.array(p, np.int32) for p in ([1, 3, 2], [2], [0, 1, 2, 3, 1], [3, 3])]
ROWS = 600  # samples per prompt


@pytest.mark.parametrize("gamma,draft_temperature", [
    (1, 0.8), pytest.param(2, 1.5, marks=pytest.mark.slow),
])
def test_output_follows_target_distribution(gamma, draft_temperature):
  """gamma 1 reaches every path (rejection + residual, all kept + bonus) within K = 2 tokens. A
  draft sampling differently from the target changes the speed only."""
  target, draft = tiny_model(0, layers=2), tiny_model(1)
  sampling = Sampling(temperature=0.8, top_p=0.9)
  batch = [p for p in PROMPTS for _ in range(ROWS)]
  out = speculate(target, draft, batch, K, sampling, gamma, None, seed=2,
                  draft_sampling=Sampling(draft_temperature))
  assert 0.2 < out.acceptance < 0.95, out.acceptance  # both the accept and the reject path ran
  for i, prompt in enumerate(PROMPTS):
    samples = [tuple(int(t) for t in x) for x in out.tokens[i * ROWS : (i + 1) * ROWS]]
    want = analytic(Single(sampling), [target], prompt, K, VOCAB)
    assert chi_square_p(samples, want, K, VOCAB) > ALPHA, i
    own = analytic(Single(sampling), [draft], prompt, K, VOCAB)
    assert chi_square_p(samples, own, K, VOCAB) < 1e-6, i  # the test can fail


@pytest.fixture(scope="module")
def pair():
  return tiny_model(0, vocab=11, layers=2), tiny_model(1, vocab=11)


LONG = [np.array(p, np.int32) for p in ([1, 3, 2], [4, 4, 7, 1, 9], [5], [2, 6, 6, 1, 0, 3, 7])]


def test_greedy_equals_generation_batch_1_and_4(pair):
  target, draft = pair
  expected = generate(*target, LONG, 20, GREEDY, eos_id=None)
  out = speculate(target, draft, LONG, 20, GREEDY, 3, None)
  for got, want in zip(out.tokens, expected, strict=True):
    np.testing.assert_array_equal(got, want)
  alone = speculate(target, draft, LONG[1:2], 20, GREEDY, 3, None)
  np.testing.assert_array_equal(alone.tokens[0], expected[1])
  assert out.verified > 0


def test_rows_stop_at_their_own_eos(pair):
  target, draft = pair
  full = generate(*target, LONG, 20, GREEDY, eos_id=None)
  eos = int(full[1][4])
  expected = generate(*target, LONG, 20, GREEDY, eos_id=eos)
  out = speculate(target, draft, LONG, 20, GREEDY, 3, eos)
  for got, want in zip(out.tokens, expected, strict=True):
    np.testing.assert_array_equal(got, want)
  assert any(len(t) < 20 for t in out.tokens)


def test_draft_equal_to_target_keeps_every_draft(pair, monkeypatch):
  """Acceptance 1: each round commits gamma + 1 tokens (the cache pointers move past every
  draft and the bonus), so 20 tokens take ceil(20 / 4) rounds; the host reads the device once."""
  target, _ = pair
  speculate(target, target, LONG, 20, GREEDY, 3, None)  # compiles
  reads = []
  device_get = jax.device_get
  monkeypatch.setattr(jax, "device_get", lambda x: reads.append(1) or device_get(x))
  with jax.transfer_guard("disallow"):
    out = speculate(target, target, LONG, 20, GREEDY, 3, None)
  assert len(reads) == 1
  assert out.acceptance == 1.0 and out.rounds == 5
  for got, want in zip(out.tokens, generate(*target, LONG, 20, GREEDY, None), strict=True):
    np.testing.assert_array_equal(got, want)


@pytest.mark.slow
@pytest.mark.parametrize("bits", [8, 4])
def test_greedy_served_target_equals_its_generation(bits):
  config = quant_config(mode="int8" if bits == 8 else "none")
  served = export.convert(trained_model(config), bits, "float32")
  draft = trained_model(quant_config(), seed=1)
  target = (served.model, served.params)
  prompts = [np.array([5, 9, 2], np.int32), np.array([7], np.int32)]
  expected = generate(*target, prompts, 12, GREEDY, None)
  out = speculate(target, (draft.model, draft.params), prompts, 12, GREEDY, 3, None)
  for got, want in zip(out.tokens, expected, strict=True):
    np.testing.assert_array_equal(got, want)


def test_clear_errors(pair):
  target, draft = pair
  with pytest.raises(ConfigError, match="gamma=0"):
    speculate(target, draft, LONG, 4, GREEDY, 0, None)
  with pytest.raises(ConfigError, match="different vocabularies"):
    speculate(target, tiny_model(0), LONG, 4, GREEDY, 2, None)
