"""Registry of position encodings, keyed by the name `model.position` uses."""

from efficiency.errors import ConfigError
from efficiency.position.alibi import Alibi
from efficiency.position.base import PositionEncoding
from efficiency.position.learned import Learned
from efficiency.position.relative import Relative
from efficiency.position.rope import RoPE
from efficiency.position.sinusoidal import Sinusoidal

POSITIONS: dict[str, type[PositionEncoding]] = {
    "none": PositionEncoding,
    "rope": RoPE,
    "sinusoidal": Sinusoidal,
    "learned": Learned,
    "relative": Relative,
    "alibi": Alibi,
}


def get_position(name: str) -> type[PositionEncoding]:
  """Returns the position-encoding class registered under `name`."""
  if name not in POSITIONS:
    raise ConfigError(f"model.position={name!r} is unknown; valid choices: {sorted(POSITIONS)}")
  return POSITIONS[name]
