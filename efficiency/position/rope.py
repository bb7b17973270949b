"""Rotary position embedding (RoPE), rotate-half convention as in Llama and Qwen, with the
context-extension scalings of `model.rope.scaling` (transformers' formulas):

  none    inv_freq_i = base^(-2i/H)
  linear  inv_freq / factor (positions interpolated)
  llama3  long wavelengths (> original_max_position / low_freq_factor) divided by factor, short
          ones (< original_max_position / high_freq_factor) kept, a smooth blend between
  yarn    per-frequency blend of inv_freq and inv_freq / factor over a ramp set by beta_fast /
          beta_slow rotations in original_max_position; cos and sin times attention_factor
          (0: 0.1 ln(factor) + 1)
"""

import math
from collections.abc import Callable

import jax.numpy as jnp
import ml_collections

from efficiency.position.base import PositionEncoding

# (inv_freq_F, the rope.scaling section, head dim, base) -> (scaled inv_freq_F, cos/sin factor)
Scaling = Callable[[jnp.ndarray, ml_collections.ConfigDict, int, float],
                   tuple[jnp.ndarray, float]]


def _none(inv_freq_F, s, h, base):
  del s, h, base
  return inv_freq_F, 1.0


def _linear(inv_freq_F, s, h, base):
  del h, base
  return inv_freq_F / s.factor, 1.0


def _llama3(inv_freq_F, s, h, base):
  del h, base
  wavelen_F = 2 * math.pi / inv_freq_F
  low_wavelen = s.original_max_position / s.low_freq_factor
  high_wavelen = s.original_max_position / s.high_freq_factor
  scaled_F = jnp.where(wavelen_F > low_wavelen, inv_freq_F / s.factor, inv_freq_F)
  smooth_F = (s.original_max_position / wavelen_F - s.low_freq_factor) / (
      s.high_freq_factor - s.low_freq_factor)
  smoothed_F = (1 - smooth_F) * scaled_F / s.factor + smooth_F * scaled_F
  medium_F = (wavelen_F >= high_wavelen) & (wavelen_F <= low_wavelen)
  return jnp.where(medium_F, smoothed_F, scaled_F), 1.0


def _yarn(inv_freq_F, s, h, base):
  def correction_dim(rotations: float) -> float:
    return h * math.log(s.original_max_position / (rotations * 2 * math.pi)) / (2 * math.log(base))

  low, high = correction_dim(s.beta_fast), correction_dim(s.beta_slow)
  if s.truncate:
    low, high = math.floor(low), math.ceil(high)
  low, high = max(low, 0), min(high, h - 1)
  high = high + 0.001 if low == high else high
  ramp_F = jnp.clip((jnp.arange(h // 2, dtype=jnp.float32) - low) / (high - low), 0, 1)
  extrapolation_F = 1 - ramp_F
  inv_freq_F = inv_freq_F / s.factor * (1 - extrapolation_F) + inv_freq_F * extrapolation_F
  attention_factor = s.attention_factor or (
      0.1 * math.log(s.factor) + 1.0 if s.factor > 1 else 1.0)
  return inv_freq_F, attention_factor


SCALINGS: dict[str, Scaling] = {"none": _none, "linear": _linear, "llama3": _llama3, "yarn": _yarn}


def apply_rope(
    x_BTNH: jnp.ndarray,
    positions_BT: jnp.ndarray,
    base: float,
    scaling: ml_collections.ConfigDict | None = None,
) -> jnp.ndarray:
  """Rotates pairs (x[i], x[i + H/2]) by angle position * inv_freq_i (base^(-2i/H), scaled)."""
  h = x_BTNH.shape[-1]
  inv_freq_F = base ** (-jnp.arange(0, h, 2, dtype=jnp.float32) / h)
  kind = "none" if scaling is None else scaling.type
  inv_freq_F, factor = SCALINGS[kind](inv_freq_F, scaling, h, base)
  angles_BTF = positions_BT.astype(jnp.float32)[..., None] * inv_freq_F
  sin_BT1F = jnp.sin(angles_BTF)[:, :, None, :]
  cos_BT1F = jnp.cos(angles_BTF)[:, :, None, :]
  if factor != 1.0:
    sin_BT1F, cos_BT1F = sin_BT1F * factor, cos_BT1F * factor
  x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos_BT1F - x2 * sin_BT1F, x2 * cos_BT1F + x1 * sin_BT1F], axis=-1)
  return out.astype(x_BTNH.dtype)


class RoPE(PositionEncoding):
  """Rotates queries and keys; base from `model.rope.base`, scaling from `model.rope.scaling`."""

  def rotate(self, x_BTNH: jnp.ndarray, positions_BT: jnp.ndarray) -> jnp.ndarray:
    rope = self.config.rope
    return apply_rope(x_BTNH, positions_BT, rope.base, rope.get("scaling"))
