"""Weighted mixtures of sources (`data.mixture`): each entry is a source label mapped to its
`weight` and the `data.*` settings that differ from the run's own (`name`, `files`, `filters`,
`filter.*`, ...). Every source is prepared on its own (its own filters and report) with the one
tokenizer of the whole mixture; batches draw documents from the sources in proportion to the
weights through Grain's mixing (`data.pipeline`), and the weights may change on resume.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from efficiency.errors import ConfigError

WEIGHT = "weight"


def is_mixture(config: ml_collections.ConfigDict) -> bool:
  """Whether `config` names a mixture (a non-empty `data.mixture`)."""
  return bool(config.data.get("mixture"))


def labels(config: ml_collections.ConfigDict) -> list[str]:
  """The mixture's source labels, sorted (the order of its weights and its source ids)."""
  return sorted(config.data.mixture.keys())


def source_config(config: ml_collections.ConfigDict, label: str) -> ml_collections.ConfigDict:
  """The config of source `label` alone: the run's config with the source's `data.*` settings
  (everything in its entry but the weight) and no mixture."""
  sub = ml_collections.ConfigDict(config.to_dict())
  sub.data.mixture = ml_collections.ConfigDict()
  overrides = {k: v for k, v in config.data.mixture[label].to_dict().items() if k != WEIGHT}
  for key, value in overrides.items():
    if key not in sub.data:
      raise ConfigError(
          f"data.mixture.{label}.{key} is not a data setting; valid choices: {WEIGHT}, "
          f"{', '.join(sorted(k for k in sub.data.keys() if k != 'mixture'))}"
      )
    if isinstance(value, Mapping):
      sub.data[key].update(value)
    else:
      sub.data[key] = value
  return sub


def source_configs(config: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
  """{label: source_config} for every source of the mixture."""
  return {label: source_config(config, label) for label in labels(config)}


def weights(config: ml_collections.ConfigDict) -> np.ndarray:
  """float64[S]: the sources' weights (in `labels` order), normalized to sum to 1."""
  values = []
  for label in labels(config):
    entry = config.data.mixture[label]
    weight = entry.get(WEIGHT) if isinstance(entry, ml_collections.ConfigDict) else None
    if not isinstance(weight, int | float) or isinstance(weight, bool) or weight < 0:
      raise ConfigError(
          f"data.mixture.{label}.{WEIGHT}={weight!r} must be a number >= 0 (each source of "
          "data.mixture needs a weight)"
      )
    values.append(float(weight))
  total = sum(values)
  if not total > 0:
    raise ConfigError(
        f"data.mixture weights are all zero ({', '.join(labels(config))}); give at least one "
        "source a positive weight"
    )
  return np.array(values) / total


class Interleaved(Sequence):
  """Several record sequences read round robin (one record of each in turn, the longer ones
  going on alone once the shorter end), so their first records sample every source."""

  def __init__(self, parts: Sequence[Sequence[Mapping[str, Any]]]):
    self._parts = list(parts)
    lengths = [len(p) for p in self._parts]
    part_of = np.concatenate([np.full(n, k, np.int64) for k, n in enumerate(lengths)])
    index = np.concatenate([np.arange(n, dtype=np.int64) for n in lengths])
    order = np.lexsort((part_of, index))  # by index within its part, then by part
    self._part_N, self._index_N = part_of[order], index[order]

  def __len__(self) -> int:
    return len(self._part_N)

  def __getitem__(self, i: int) -> Mapping[str, Any]:
    if not -len(self) <= i < len(self):
      raise IndexError(i)
    return self._parts[int(self._part_N[i])][int(self._index_N[i])]
