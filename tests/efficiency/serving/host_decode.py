"""The host decode loop the on-device generation replaced, kept as the tests' reference: one
prefill of right-padded prompts, then one cached step per token, logits copied to numpy and
sampled row by row in float64 (`sampling.distribution`)."""

import flax.linen as nn
import numpy as np

from efficiency.serving.runner import Runner
from efficiency.serving.sampling import Sampling, distribution, sample


def host_generate(
    model: nn.Module,
    params: dict,
    prompts: list[np.ndarray],
    max_new_tokens: int,
    sampling: Sampling,
    eos_id: int | None,
    seed: int = 0,
) -> list[np.ndarray]:
  """New tokens for each prompt (up to and including EOS, at most max_new_tokens)."""
  rng = np.random.default_rng(seed)
  lengths_B = np.array([len(p) for p in prompts], np.int32)
  b, t = len(prompts), int(lengths_B.max())
  runner = Runner(model, params, b, t + max_new_tokens + 32)
  tokens_BT = np.zeros((b, t), np.int32)
  for i, p in enumerate(prompts):
    tokens_BT[i, : len(p)] = p
  logits_BV = runner.feed(tokens_BT, np.zeros(b, np.int32))[np.arange(b), lengths_B - 1]
  out = [[] for _ in range(b)]
  done = np.zeros(b, bool)
  for step in range(max_new_tokens):
    next_B = np.array([sample(distribution(logits_BV[i], sampling), rng) for i in range(b)])
    for i in np.flatnonzero(~done):
      out[i].append(int(next_B[i]))
      done[i] |= next_B[i] == eos_id
    if done.all() or step == max_new_tokens - 1:
      break
    logits_BV = runner.feed(next_B[:, None].astype(np.int32), lengths_B)[:, 0]
    lengths_B = lengths_B + 1
  return [np.array(o, np.int32) for o in out]
