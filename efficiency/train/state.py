"""The training state: step, parameters, optimizer state and the PRNG key, saved together."""

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs besides the data iterator."""

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
