"""Registry of position encodings, keyed by the name `model.position` uses."""

from efficiency.position.base import PositionEncoding
from efficiency.position.rope import RoPE

POSITIONS: dict[str, type[PositionEncoding]] = {
    "none": PositionEncoding,
    "rope": RoPE,
}


def get_position(name: str) -> type[PositionEncoding]:
  """Returns the position-encoding class registered under `name`."""
  if name not in POSITIONS:
    raise ValueError(f"model.position={name!r} is unknown; valid choices: {sorted(POSITIONS)}")
  return POSITIONS[name]
