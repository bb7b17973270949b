"""The training state: step, parameters, optimizer state and the PRNG key, saved together."""

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs besides the data iterator.

  `params` are the trainable parameters: all of them, or a PEFT method's trainable tree.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


@flax.struct.dataclass
class PeftTrainState(TrainState):
  """A PEFT run's state: also the frozen tree (base weights, PiSSA residuals, int8 codes), which
  gets no gradient and no optimizer state but is checkpointed so the run restores on its own."""

  frozen: Any = None
