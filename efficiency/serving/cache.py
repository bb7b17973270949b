"""A model's KV cache, allocated from its attention variant's `kv_cache_spec`.

Full entries get one slot per position (`max_len // every`); windowed entries, given the
decoder's `rollback` bound, a ring of `window + rollback` slots whatever `max_len` is (see
`efficiency.attention.cache` for the rule and why it keeps rollback exact). `rollback` is how far
a call may start behind the highest position already written: 0 for plain generation (each call
starts at the row's pointer; prompt padding is not written into rings), the rejected drafts and
re-fed tokens for speculative decoding; None keeps windowed entries at full length (for a decoder
with no bound, such as the host engine that reuses cached prompt prefixes across requests).
"""

import jax
import jax.numpy as jnp
import ml_collections

from efficiency.attention import get_attention


def cache_shapes(
    model_config: ml_collections.ConfigDict, batch: int, max_len: int, rollback: int | None
) -> dict:
  """Shapes and dtypes of every cache entry: {name: `CacheEntry.array_shape`} per layer,
  stacked on a leading layer axis when `scan_layers`, else {"layers_i": {...}}."""
  spec = get_attention(model_config.attention).kv_cache_spec(model_config)
  layers = model_config.num_layers

  def layer(lead: tuple[int, ...]) -> dict:
    return {
        name: jax.ShapeDtypeStruct(
            (*lead, *entry.array_shape(batch, entry.slots(max_len, rollback))),
            jnp.dtype(entry.dtype),
        )
        for name, entry in spec.items()
    }

  if model_config.scan_layers:
    return layer((layers,))
  return {f"layers_{i}": layer(()) for i in range(layers)}


def init_cache(
    model_config: ml_collections.ConfigDict, batch: int, max_len: int,
    rollback: int | None = None,
) -> dict:
  """Zeros for every cache entry (`cache_shapes`)."""
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                      cache_shapes(model_config, batch, max_len, rollback))


def cache_bytes(
    model_config: ml_collections.ConfigDict, batch: int, max_len: int,
    rollback: int | None = None,
) -> int:
  """Bytes `init_cache` allocates for these sizes, all layers and entries."""
  shapes = jax.tree.leaves(cache_shapes(model_config, batch, max_len, rollback))
  return sum(s.size * s.dtype.itemsize for s in shapes)
