"""The interface every position encoding implements; the base class encodes no position."""

import flax.linen as nn
import jax.numpy as jnp
import ml_collections


class PositionEncoding:
  """Hooks a position encoding can use: an input embedding, a rotation of queries/keys, and an
  additive attention-score bias.

  Subclasses override what they need; the defaults leave the model position-free. Positions come
  from the batch and restart at every packed document, so every hook sees in-document positions.
  """

  def __init__(self, model_config: ml_collections.ConfigDict):
    self.config = model_config

  def input_embedding(self) -> nn.Module | None:
    """A module mapping (x_BTD, positions_BT) -> x_BTD, added at the input; None for none."""
    return None

  def rotate(self, x_BTNH: jnp.ndarray, positions_BT: jnp.ndarray) -> jnp.ndarray:
    """Rotates query or key heads by their positions; identity by default."""
    del positions_BT
    return x_BTNH

  def score_bias(self) -> nn.Module | None:
    """A module mapping (q_positions [..., T], k_positions [..., S]) -> float32 bias
    [..., num_heads, T, S] added to the attention scores; None for none.

    Leading dimensions are free, so blocked and gathered attention can ask for the bias of just
    the query/key pairs they score. Create it inside the attention module's compact call.
    The module also has `KIND` ("fixed" or "learned") and `as_function() -> (params, fn)`, the
    bias as a pure `fn(params, q_positions, k_positions)` for kernels that differentiate it
    themselves (`efficiency.attention.kernels.chunked`).
    """
    return None
