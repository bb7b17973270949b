"""Pacing functions by `data.curriculum.pacing`: competence (the share of documents, easiest
first, that may be sampled) at training progress p in [0, 1] of the curriculum phase.

They start at c0 = `data.curriculum.start` and reach 1 at p = 1 (Platanios et al., 2019).
Adding a pacing means adding one function and one line to PACINGS.
"""

import math
from collections.abc import Callable

import ml_collections


def linear(p: float, c: ml_collections.ConfigDict) -> float:
  return min(1.0, c.start + (1 - c.start) * p)


def root(p: float, c: ml_collections.ConfigDict) -> float:
  return min(1.0, math.sqrt(c.start**2 + (1 - c.start**2) * p))


def step(p: float, c: ml_collections.ConfigDict) -> float:
  """`data.curriculum.stages` equal steps from c0 up to 1."""
  stage = min(math.floor(p * c.stages), c.stages)
  return min(1.0, c.start + (1 - c.start) * stage / c.stages)


PACINGS: dict[str, Callable[[float, ml_collections.ConfigDict], float]] = {
    "linear": linear,
    "root": root,
    "step": step,
}

