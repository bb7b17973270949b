"""Attention masks built from segment ids: causal and document isolation."""

import jax.numpy as jnp


def causal_segment_mask(
    q_segment_ids_BT: jnp.ndarray,
    kv_segment_ids_BS: jnp.ndarray,
    q_positions_BT: jnp.ndarray,
    kv_positions_BS: jnp.ndarray,
) -> jnp.ndarray:
  """True where a query may attend a key: same non-padding segment and key not in the future.

  Causality is by absolute index within the row (queries and keys come from the same packed row),
  which also covers chunks of a document that restart their positions. Returns bool [B, 1, T, S]
  (the singleton broadcasts over heads).
  """
  del q_positions_BT, kv_positions_BS
  t = q_segment_ids_BT.shape[1]
  s = kv_segment_ids_BS.shape[1]
  causal_TS = jnp.arange(t)[:, None] + (s - t) >= jnp.arange(s)[None, :]
  same_segment_BTS = q_segment_ids_BT[:, :, None] == kv_segment_ids_BS[:, None, :]
  not_padding_BS = (kv_segment_ids_BS != 0)[:, None, :]
  return (causal_TS[None] & same_segment_BTS & not_padding_BS)[:, None]
