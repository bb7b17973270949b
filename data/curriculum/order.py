"""The curriculum's document order: a deterministic function of the difficulty scores and seed.

Documents are ranked easiest first (ties in random order). Over the first
`data.curriculum.fraction` of the run's training tokens, each next document is drawn uniformly,
with replacement, from the easiest `competence(progress)` share; progress is measured in tokens
drawn so far. The rest of the run, and beyond, are shuffled epochs of all documents.
"""

import math

import ml_collections
import numpy as np

from data.curriculum.pacing import PACINGS

# Documents drawn per competence update (competence is constant within a chunk).
CHUNK = 64


def curriculum_order(
    scores_N: np.ndarray, tokens_N: np.ndarray, config: ml_collections.ConfigDict
) -> np.ndarray:
  """int64 positions into the scored documents, in training order (global, all processes)."""
  c = config.data.curriculum
  pacing = PACINGS[c.pacing]
  rng = np.random.default_rng(config.seed)
  n = len(scores_N)
  ranked_N = np.lexsort((rng.permutation(n), scores_N))
  cost_N = tokens_N + 1  # with BOS/EOS, the positions a document fills
  total = config.steps * config.batch_size * config.seq_len
  ramp = c.fraction * total
  parts, drawn = [], 0
  while drawn < ramp:
    pool = max(1, math.ceil(pacing(drawn / ramp, c) * n))
    chunk = ranked_N[rng.integers(pool, size=CHUNK)]
    parts.append(chunk)
    drawn += int(cost_N[chunk].sum())
  epochs = math.ceil(max(total - drawn, 0) / cost_N.sum()) + 1
  parts += [rng.permutation(n) for _ in range(epochs)]
  return np.concatenate(parts).astype(np.int64)
