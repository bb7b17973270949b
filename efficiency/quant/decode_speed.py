"""Greedy decode timing for quant_report.json, given any (model, params).

The decoding path is one function so that a KV-cache decoder can replace it; until then it is a
plain jitted greedy loop that recomputes the whole prefix for every new token (named in METHOD).
"""

import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

METHOD = (
    "greedy, no KV cache: jit(fori_loop) over a fixed [B, prompt + new] token buffer, the full "
    "model re-run on the buffer for each new token (causal, so later slots do not matter)"
)


@functools.partial(jax.jit, static_argnames=("model", "new_tokens"))
def greedy_decode(
    model: nn.Module, params: dict, prompt_BP: jnp.ndarray, new_tokens: int
) -> jnp.ndarray:
  """prompt [B, P] -> [B, P + new_tokens], each new token the argmax of the previous logits."""
  b, p = prompt_BP.shape
  tokens_BL = jnp.concatenate([prompt_BP, jnp.zeros((b, new_tokens), prompt_BP.dtype)], axis=1)
  segment_ids_BL = jnp.ones_like(tokens_BL)
  positions_BL = jnp.broadcast_to(jnp.arange(p + new_tokens), tokens_BL.shape)

  def step(i, tokens_BL):
    logits_BLV = model.apply({"params": params}, tokens_BL, segment_ids_BL, positions_BL)
    next_B = jnp.argmax(logits_BLV[:, i - 1], axis=-1).astype(tokens_BL.dtype)
    return tokens_BL.at[:, i].set(next_B)

  return jax.lax.fori_loop(p, p + new_tokens, step, tokens_BL)


def decode_speed(
    model: nn.Module, params: dict, prompt_BP: jnp.ndarray, new_tokens: int, repeats: int = 3
) -> dict:
  """Best-of-`repeats` wall time of greedy_decode after a compile run: per-token latency (s)
  and generated tokens per second over the batch; also returns the tokens."""
  out = jax.block_until_ready(greedy_decode(model, params, prompt_BP, new_tokens))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(greedy_decode(model, params, prompt_BP, new_tokens))
    best = min(best, time.perf_counter() - start)
  return {
      "latency_s_per_token": best / new_tokens,
      "tokens_per_s": prompt_BP.shape[0] * new_tokens / best,
      "batch": prompt_BP.shape[0], "prompt_len": prompt_BP.shape[1], "new_tokens": new_tokens,
      "method": METHOD, "tokens": out,
  }
