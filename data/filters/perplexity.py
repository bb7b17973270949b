"""Perplexity filtering: keeps `data.filter.keep_fraction` of the documents, those with the lowest
mean token loss under the reference model of `data.reference_workdir`."""

import math

import numpy as np

from data.filters.documents import Documents


def keep(docs: Documents) -> np.ndarray:
  fraction = docs.config.data.filter.keep_fraction
  losses = docs.reference_losses()
  kept = np.argsort(losses, kind="stable")[: math.ceil(fraction * len(losses))]
  mask = np.zeros(len(losses), bool)
  mask[kept] = True
  return mask
