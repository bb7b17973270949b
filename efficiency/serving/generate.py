"""Batched autoregressive generation: one prefill of right-padded prompts, then one cached decode
step per token for all rows, each row at its own position; rows stop at EOS."""

import flax.linen as nn
import numpy as np
from tqdm import tqdm

from efficiency.errors import ConfigError
from efficiency.serving.runner import Runner
from efficiency.serving.sampling import Sampling, distribution, sample


def generate(
    model: nn.Module,
    params: dict,
    prompts: list[np.ndarray],
    max_new_tokens: int,
    sampling: Sampling,
    eos_id: int | None,
    seed: int = 0,
    progress: bool = False,
) -> list[np.ndarray]:
  """New tokens for each prompt (up to and including EOS, at most max_new_tokens)."""
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ConfigError("every prompt needs at least one token")
  if max_new_tokens < 1:
    raise ConfigError(f"max_new_tokens={max_new_tokens} must be >= 1")
  rng = np.random.default_rng(seed)
  lengths_B = np.array([len(p) for p in prompts], np.int32)
  b, t = len(prompts), int(lengths_B.max())
  runner = Runner(model, params, b, t + max_new_tokens + 32)
  tokens_BT = np.zeros((b, t), np.int32)
  for i, p in enumerate(prompts):
    tokens_BT[i, : len(p)] = p
  logits_BTV = runner.feed(tokens_BT, np.zeros(b, np.int32))
  logits_BV = logits_BTV[np.arange(b), lengths_B - 1]
  out = [[] for _ in range(b)]
  done = np.zeros(b, bool)
  for step in tqdm(range(max_new_tokens), desc="decode", disable=not progress, leave=False):
    next_B = np.array([sample(distribution(logits_BV[i], sampling), rng) for i in range(b)])
    for i in np.flatnonzero(~done):
      out[i].append(int(next_B[i]))
      done[i] |= next_B[i] == eos_id
    if done.all() or step == max_new_tokens - 1:
      break
    logits_BV = runner.feed(next_B[:, None].astype(np.int32), lengths_B)[:, 0]
    lengths_B = lengths_B + 1
  return [np.array(o, np.int32) for o in out]
