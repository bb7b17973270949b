"""One model's cached forward pass: writes T new tokens at each row's pointer and returns their
next-token logits. Prefill (the prompt) and decode steps (1 token, or a draft to verify) are the
same function; each distinct T compiles once. A row's tokens past its `lengths_B` are padding:
marked segment 0, so ring-buffer entries skip them."""

import flax.linen as nn
import jax.numpy as jnp


def cached_forward(
    model: nn.Module, params: dict, tokens_BT: jnp.ndarray, cache: dict, start_B: jnp.ndarray,
    lengths_B: jnp.ndarray | None = None, logits_at_BK: jnp.ndarray | None = None,
) -> tuple[jnp.ndarray, dict]:
  """Logits [B, T, V] of tokens_BT placed at positions start_B[b] + t, and the updated cache;
  only the first lengths_B[b] tokens of row b are real (all when None). With `logits_at_BK`,
  only the logits [B, K, V] at those indices into T."""
  t = tokens_BT.shape[1]
  t_1T = jnp.arange(t, dtype=jnp.int32)[None]
  positions_BT = start_B[:, None] + t_1T
  if lengths_B is None:
    segment_ids_BT = jnp.ones_like(tokens_BT)
  else:
    segment_ids_BT = (t_1T < lengths_B[:, None]).astype(tokens_BT.dtype)
  return model.apply({"params": params}, tokens_BT, segment_ids_BT, positions_BT, cache=cache,
                     logits_at_BK=logits_at_BK)


def bucket(length: int) -> int:
  """Pads a feed to a power of two, so few shapes compile."""
  return 1 << (length - 1).bit_length()
