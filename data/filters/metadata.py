"""Keeps documents whose record field `data.filter.field` lies in [`data.filter.field_min`,
`data.filter.field_max`] (FineWeb-Edu's `int_score >= 3`: field=int_score, field_min=3)."""

import numpy as np

from data.filters.documents import Documents
from efficiency.errors import ConfigError


def keep(docs: Documents) -> np.ndarray:
  f = docs.config.data.filter
  first = docs.records[int(docs.indices[0])]
  if f.field not in first:
    raise ConfigError(
        f"data.filter.field={f.field!r} is not a field of the records; valid choices: "
        f"{', '.join(sorted(k for k in first if k != 'text'))}"
    )
  try:
    values = np.array([float(docs.records[int(i)][f.field]) for i in docs.indices])
  except ValueError as e:
    raise ConfigError(f"data.filter.field={f.field!r} is not a numeric field ({e})") from None
  return (values >= f.field_min) & (values <= f.field_max)
