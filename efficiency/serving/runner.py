"""One model's cached forward pass: writes T new tokens at each row's pointer and returns their
next-token logits. Prefill (the prompt) and decode steps (1 token, or a draft to verify) are the
same function; each distinct T compiles once."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from efficiency.serving.cache import init_cache


def cached_forward(
    model: nn.Module, params: dict, tokens_BT: jnp.ndarray, cache: dict, start_B: jnp.ndarray
) -> tuple[jnp.ndarray, dict]:
  """Logits [B, T, V] of tokens_BT placed at positions start_B[b] + t, and the updated cache."""
  t = tokens_BT.shape[1]
  positions_BT = start_B[:, None] + jnp.arange(t, dtype=jnp.int32)[None]
  segment_ids_BT = jnp.ones_like(tokens_BT)
  return model.apply({"params": params}, tokens_BT, segment_ids_BT, positions_BT, cache=cache)


@functools.cache
def compiled_forward(model: nn.Module):
  """The jitted cached forward pass of `model` (one per model, shared by its runners; the cache
  argument is donated)."""
  return jax.jit(functools.partial(cached_forward, model), donate_argnums=2)


def bucket(length: int) -> int:
  """Pads a feed to a power of two, so few shapes compile (see `Runner.warmup`)."""
  return 1 << (length - 1).bit_length()


class Runner:
  """A model, its parameters and one cache of `max_len` slots for `batch` rows.

  `model` is any `Transformer` (a quantized one decodes through the same path); `params` its
  parameters.
  """

  def __init__(self, model: nn.Module, params: dict, batch: int, max_len: int):
    self.model, self.params, self.batch, self.max_len = model, params, batch, max_len
    self.cache = init_cache(model.config, batch, max_len)
    self._forward = compiled_forward(model)

  def feed(self, tokens_BT: np.ndarray, start_B: np.ndarray) -> np.ndarray:
    """Writes tokens_BT at slots start_B[b].. and returns their logits [B, T, V] (float32).

    The feed is padded to `bucket(T)` tokens; the padding lands past the pointer and stays
    masked until overwritten.
    """
    b, t = tokens_BT.shape
    padded = bucket(t)
    if int(np.max(start_B)) + padded > self.max_len:
      raise ValueError(f"cache of {self.max_len} slots cannot hold {int(np.max(start_B)) + t}")
    tokens = np.zeros((b, padded), np.int32)
    tokens[:, :t] = tokens_BT
    logits_BTV, self.cache = self._forward(
        self.params, tokens, self.cache, np.asarray(start_B, np.int32)
    )
    return np.asarray(logits_BTV)[:, :t]

  def warmup(self, max_tokens: int) -> None:
    """Compiles every feed length up to `max_tokens` (so no compilation lands in a timing)."""
    length = 1
    while length <= bucket(max_tokens):
      self.feed(np.zeros((self.batch, length), np.int32), np.zeros(self.batch, np.int32))
      length *= 2
