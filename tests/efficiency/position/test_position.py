"""Position encodings: hand-computed ALiBi and T5 relative biases, input embeddings, registry."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficiency.position import POSITIONS, get_position
from efficiency.position.alibi import AlibiBias, alibi_slopes
from efficiency.position.learned import LearnedEmbedding
from efficiency.position.relative import RelativeBias, causal_bucket
from efficiency.position.rope import apply_rope
from efficiency.position.sinusoidal import SinusoidalEmbedding
from tests.helpers import tiny_model_config


def test_alibi_slopes_by_hand():
  np.testing.assert_allclose(alibi_slopes(4), [2**-2, 2**-4, 2**-6, 2**-8])
  # 6 heads: the 4-head slopes, then every other slope of the 8-head series.
  np.testing.assert_allclose(alibi_slopes(6), [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3])


def test_alibi_bias_uses_in_document_positions():
  """Row of two documents: positions [0 1 2 | 0 1]; bias = -slope * (q_pos - k_pos)."""
  positions = jnp.array([[0, 1, 2, 0, 1]])
  bias = np.asarray(AlibiBias(2).apply({}, positions, positions))  # slopes 1/16, 1/256
  assert bias.shape == (1, 2, 5, 5)
  assert bias[0, 0, 2, 0] == -2 / 16
  assert bias[0, 1, 2, 1] == -1 / 256
  assert bias[0, 0, 4, 3] == -1 / 16  # second document: distance 1, not 4
  assert bias[0, 0, 3, 3] == 0.0


def test_relative_buckets_by_hand():
  """32 buckets, max distance 128: 0..15 exact, then 16 + floor(16 log(d/16) / log 8)."""
  distance = jnp.array([0, 1, 15, 16, 31, 32, 64, 127, 128, 1000, -3])
  want = [0, 1, 15, 16, 16 + int(16 * np.log(31 / 16) / np.log(8)), 21, 26, 31, 31, 31, 0]
  np.testing.assert_array_equal(causal_bucket(distance, 32, 128), want)
  assert want[4] == 21


def test_relative_bias_looks_up_the_table():
  module = RelativeBias(num_heads=3, num_buckets=8, max_distance=16, init_std=1.0)
  positions = jnp.array([[0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]])
  variables = nn.meta.unbox(module.init(jax.random.PRNGKey(0), positions, positions))
  table = np.asarray(variables["params"]["embedding"])
  bias = np.asarray(module.apply(variables, positions, positions))
  assert bias.shape == (1, 3, 14, 14)
  # Query at index 13 (position 9) and key at index 4 (position 0): distance 9, bucket
  # 4 + floor(4 * log(9/4) / log(4)) = 6.
  np.testing.assert_allclose(bias[0, :, 13, 4], table[6])
  np.testing.assert_allclose(bias[0, :, 3, 1], table[2])  # distance 2: exact bucket


def test_sinusoidal_and_learned_embeddings_add_by_position(rng):
  x = jnp.zeros((1, 4, 6))
  positions = jnp.array([[0, 1, 0, 1]])
  y = SinusoidalEmbedding().apply({}, x, positions)
  np.testing.assert_allclose(y[0, 1], [np.sin(1), np.sin(1e-4 ** (1 / 3)), np.sin(1e-4 ** (2 / 3)),
                                       np.cos(1), np.cos(1e-4 ** (1 / 3)), np.cos(1e-4 ** (2 / 3))],
                             atol=1e-6)
  np.testing.assert_array_equal(y[0, 0], y[0, 2])  # position restarts with the document
  scaled = SinusoidalEmbedding(scale=0.02).apply({}, x + 1.0, positions)
  np.testing.assert_allclose(scaled - 1.0, 0.02 * y, atol=1e-6)
  learned = LearnedEmbedding(max_positions=8, init_std=1.0)
  variables = nn.meta.unbox(learned.init(jax.random.PRNGKey(0), x, positions))
  table = variables["params"]["embedding"]
  np.testing.assert_allclose(learned.apply(variables, x, positions)[0, 3], table[1])


@pytest.mark.parametrize("name", sorted(POSITIONS))
def test_each_position_uses_its_hooks(name):
  """rope rotates; sinusoidal/learned embed; relative/alibi bias; none does nothing."""
  position = get_position(name)(tiny_model_config())
  x = jnp.ones((1, 3, 1, 4))
  rotates = not np.allclose(position.rotate(x, jnp.array([[0, 1, 2]])), x)
  embeds = position.input_embedding() is not None
  biases = position.score_bias() is not None
  assert (rotates, embeds, biases) == {
      "rope": (True, False, False), "sinusoidal": (False, True, False),
      "learned": (False, True, False), "relative": (False, False, True),
      "alibi": (False, False, True), "none": (False, False, False),
  }[name]


def test_rope_scalings_by_their_definitions(rng):
  """linear: the unscaled rotation at position / factor; llama3 and yarn with factor 1: the
  unscaled rotation; yarn: the frequencies below the ramp unchanged, cos and sin scaled by
  0.1 ln(factor) + 1 (so vector norms grow by it)."""
  x = jnp.asarray(rng.normal(size=(1, 6, 2, 16)), jnp.float32)
  positions = jnp.arange(6)[None] * 37
  scaling = tiny_model_config().rope.scaling
  plain = apply_rope(x, positions, 1e4)
  scaling.update(type="linear", factor=4.0)
  np.testing.assert_allclose(apply_rope(x, positions, 1e4, scaling),
                             apply_rope(x, positions / 4.0, 1e4), atol=1e-5)
  for kind in ("llama3", "yarn"):
    scaling.update(type=kind, factor=1.0, original_max_position=64)
    np.testing.assert_allclose(apply_rope(x, positions, 1e4, scaling), plain, atol=1e-5)
  scaling.update(type="yarn", factor=8.0)
  yarn = apply_rope(x, positions, 1e4, scaling)
  np.testing.assert_allclose(np.linalg.norm(yarn, axis=-1),
                             (0.1 * np.log(8.0) + 1) * np.linalg.norm(plain, axis=-1), rtol=1e-5)
  # Pair 0 (fastest frequency) is below the ramp: rotated as without scaling.
  np.testing.assert_allclose(yarn[..., 0] / (0.1 * np.log(8.0) + 1), plain[..., 0], atol=1e-5)
