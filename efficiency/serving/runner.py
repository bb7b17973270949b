"""One model's cached forward pass: writes T new tokens at each row's pointer and returns their
next-token logits. Prefill (the prompt) and decode steps (1 token, or a draft to verify) are the
same function; each distinct T compiles once. A row's tokens past its `lengths_B` are padding:
marked segment 0, so ring-buffer entries skip them."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from efficiency.serving.cache import init_cache


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


@functools.cache
def compiled_forward(model: nn.Module):
  """The jitted cached forward pass of `model` (one per model, shared by its runners; the cache
  argument is donated)."""
  return jax.jit(functools.partial(cached_forward, model), donate_argnums=2)


def bucket(length: int) -> int:
  """Pads a feed to a power of two, so few shapes compile (see `Runner.warmup`)."""
  return 1 << (length - 1).bit_length()


class Runner:
  """A model, its parameters and one cache of `max_len` positions for `batch` rows.

  `model` is any `Transformer` (a quantized one decodes through the same path); `params` its
  parameters. `rollback` bounds how far a feed may start behind the highest position fed so far
  (windowed entries are then rings, `efficiency.serving.cache`); None keeps them at full length.
  """

  def __init__(self, model: nn.Module, params: dict, batch: int, max_len: int,
               rollback: int | None = None):
    self.model, self.params, self.batch, self.max_len = model, params, batch, max_len
    self.rollback = rollback
    self.cache = init_cache(model.config, batch, max_len, rollback)
    self._forward = compiled_forward(model)

  def feed(self, tokens_BT: np.ndarray, start_B: np.ndarray,
           lengths_B: np.ndarray | None = None) -> np.ndarray:
    """Writes tokens_BT at positions start_B[b].. and returns their logits [B, T, V] (float32);
    only the first lengths_B[b] tokens of row b are real (all T when None).

    The feed is padded to `bucket(T)` tokens; the padding lands past the pointer and stays
    masked until overwritten (rings skip it).
    """
    b, t = tokens_BT.shape
    padded = bucket(t)
    if int(np.max(start_B)) + padded > self.max_len:
      raise ValueError(f"cache of {self.max_len} slots cannot hold {int(np.max(start_B)) + t}")
    tokens = np.zeros((b, padded), np.int32)
    tokens[:, :t] = tokens_BT
    lengths_B = np.full(b, t, np.int32) if lengths_B is None else np.asarray(lengths_B, np.int32)
    logits_BTV, self.cache = self._forward(
        self.params, tokens, self.cache, np.asarray(start_B, np.int32), lengths_B
    )
    return np.asarray(logits_BTV)[:, :t]

  def warmup(self, max_tokens: int) -> None:
    """Compiles every feed length up to `max_tokens` (so no compilation lands in a timing),
    then starts from an empty cache (the warmup's writes count against no rollback bound)."""
    length = 1
    while length <= bucket(max_tokens):
      self.feed(np.zeros((self.batch, length), np.int32), np.zeros(self.batch, np.int32))
      length *= 2
    self.cache = init_cache(self.model.config, self.batch, self.max_len, self.rollback)
