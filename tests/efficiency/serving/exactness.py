"""Exact next-token distributions by enumeration (uncached forward passes) and the chi-square
goodness-of-fit test that sampled decoders are checked with (fixed seeds: deterministic)."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from tests.efficiency.serving import reference

ALPHA = 1e-3  # significance of the chi-square goodness-of-fit test


@functools.cache
def _forward(model):
  return jax.jit(lambda params, x, p: model.apply({"params": params}, x, jnp.ones_like(x), p))


def next_logits(model, params, seqs: np.ndarray) -> np.ndarray:
  """Uncached forward pass: logits after the last token of each row [B, V]. Rows are padded to
  a multiple of 16 and 16 tokens (right padding does not change causal logits), so one shape
  compiles per model."""
  b, t = seqs.shape
  padded = np.zeros((-(-b // 16) * 16, -(-t // 16) * 16), np.int32)
  padded[:b, :t] = seqs
  positions = np.broadcast_to(np.arange(padded.shape[1], dtype=np.int32), padded.shape)
  return np.asarray(_forward(model)(params, padded, positions))[:b, t - 1]


def analytic(collab, members, prompt: np.ndarray, k: int, vocab: int) -> np.ndarray:
  """P(first k new tokens) under the target r, by enumeration: [vocab**k] (itertools order)."""
  joint = {(): 1.0}
  for _ in range(k):
    prefixes = list(joint)
    seqs = np.array([[*prompt, *p] for p in prefixes], np.int32)
    logits = [next_logits(m, p, seqs) for m, p in members]
    joint = {
        (*prefix, x): joint[prefix] * reference.target(collab, [lg[i] for lg in logits])[x]
        for i, prefix in enumerate(prefixes)
        for x in range(vocab)
    }
  return np.array([joint[c] for c in itertools.product(range(vocab), repeat=k)])


def chi_square_p(samples: list[tuple[int, ...]], expected_probs: np.ndarray, k: int,
                 vocab: int) -> float:
  """Goodness-of-fit p-value of k-token samples; cells expecting fewer than 5 are pooled."""
  cells = {c: i for i, c in enumerate(itertools.product(range(vocab), repeat=k))}
  observed = np.bincount([cells[s] for s in samples], minlength=len(cells))
  if observed[expected_probs == 0].any():
    return 0.0  # a sample the distribution cannot produce
  expected = expected_probs * len(samples)
  small = expected < 5
  observed = np.append(observed[~small], observed[small].sum())
  expected = np.append(expected[~small], expected[small].sum())
  if expected[-1] == 0:
    observed, expected = observed[:-1], expected[:-1]
  return stats.chisquare(observed, expected).pvalue
