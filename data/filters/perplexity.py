"""Perplexity filtering: keeps `data.filter.keep_fraction` of the documents, those with the lowest
mean token loss under the reference model of `data.reference_workdir`."""

import math

import numpy as np

from data import reference
from data.filters import Documents


def keep(docs: Documents) -> np.ndarray:
  fraction = docs.config.data.filter.keep_fraction
  if not 0 < fraction <= 1:
    raise ValueError(f"data.filter.keep_fraction={fraction} must be in (0, 1]")
  losses = reference.document_losses(docs.texts, docs.config)
  kept = np.argsort(losses, kind="stable")[: math.ceil(fraction * len(losses))]
  mask = np.zeros(len(losses), bool)
  mask[kept] = True
  return mask
