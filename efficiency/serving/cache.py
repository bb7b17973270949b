"""A model's KV cache, allocated from its attention variant's `kv_cache_spec`."""

import jax.numpy as jnp
import ml_collections

from efficiency.attention import get_attention


def init_cache(model_config: ml_collections.ConfigDict, batch: int, max_len: int) -> dict:
  """Zeros for every cache entry: {name: [B, max_len // every, *shape]} per layer, stacked on a
  leading layer axis when `scan_layers`, else {"layers_i": {...}}. Windowed entries are kept at
  full length (slot = position; the window is applied by the attention mask)."""
  spec = get_attention(model_config.attention).kv_cache_spec(model_config)
  layers = model_config.num_layers

  def layer(lead: tuple[int, ...]) -> dict:
    return {
        name: jnp.zeros(
            (*lead, batch, max_len // entry.every, *entry.shape), jnp.dtype(entry.dtype)
        )
        for name, entry in spec.items()
    }

  if model_config.scan_layers:
    return layer((layers,))
  return {f"layers_{i}": layer(()) for i in range(layers)}
