"""Requests are checked before anything is allocated: a prompt longer than the model's context
is refused (or cut to its last tokens), and a request whose KV cache and logits would not fit
the device's free memory is refused in one line naming the bytes, for every decoder."""

import jax
import numpy as np
import pytest

from efficiency.errors import ConfigError
from efficiency.serving import request
from efficiency.serving.collaborate import collaborate
from efficiency.serving.generate import run, stream
from efficiency.serving.sampling import Sampling
from efficiency.serving.speculative import speculate
from efficiency.serving.targets import WeightedEnsemble
from tests.helpers import tiny_model

GREEDY = Sampling(0.0)
PROMPTS = [np.array([1, 2, 3], np.int32)]


def test_a_prompt_longer_than_the_context_is_refused_or_cut(capsys):
  long = np.arange(40, dtype=np.int32) % 7
  with pytest.raises(ConfigError, match="prompt 1 has 40 tokens, more than the model's context "
                                        "of 32 tokens; .* --truncate_prompt to keep its last 24"):
    request.fit_prompts([PROMPTS[0], long], 8, 32)
  kept = request.fit_prompts([PROMPTS[0], long], 8, 32, truncate=True)
  np.testing.assert_array_equal(kept[0], PROMPTS[0])
  np.testing.assert_array_equal(kept[1], long[-24:])
  assert "warning: prompt 1 has 40 tokens" in capsys.readouterr().err
  with pytest.raises(ConfigError, match="max_new_tokens=40 exceeds the model's context of 32"):
    request.fit_prompts([long], 40, 32)


@pytest.fixture
def small_device(monkeypatch):
  """A device with 100 free bytes, and no transfer allowed (nothing may be allocated)."""
  monkeypatch.setattr(request, "device_bytes_free", lambda: 100)

  def no_transfer(*args, **kwargs):
    raise AssertionError("allocated before the request was checked")

  monkeypatch.setattr(jax, "device_put", no_transfer)


def test_a_request_that_does_not_fit_is_refused_before_allocating(small_device):
  a, b = tiny_model(0, vocab=11), tiny_model(1, vocab=11)
  calls = {
      "plain": lambda: run(*a, PROMPTS, 4, GREEDY, None),
      "stream": lambda: next(stream(*a, PROMPTS, 4, GREEDY, None, chunk=2)),
      "speculative": lambda: speculate(a, b, PROMPTS, 4, GREEDY, 2, None),
      "cos": lambda: collaborate(WeightedEnsemble((0.5, 0.5), GREEDY), [a, b], PROMPTS, 4, "cos",
                                 None, 2),
  }
  for name, call in calls.items():
    with pytest.raises(ConfigError, match=r"the request needs [\d,]+ bytes \([\d,]+ of KV cache "
                                          r"and [\d,]+ of logits for batch=1\) but the device "
                                          r"has 100 free"):
      call()
    print(name, "refused")
