"""Greedy KV-cache decode timing for quant_report.json and the quantization benchmark, given any
(model, params): a float model and its quantized conversion decode through the same path."""

import time

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from efficiency.serving.generate import generate, kv_cache_bytes
from efficiency.serving.sampling import Sampling

METHOD = (
    "greedy KV-cache decoding (efficiency.serving.generate): one jitted on-device program per "
    "request (prefill of the prompt, then a while loop of cached one-token steps), no EOS "
    "stop; compile excluded"
)


def decode_speed(
    model: nn.Module, params: dict, prompt_BP: jnp.ndarray, new_tokens: int, repeats: int = 3
) -> dict:
  """Best-of-`repeats` wall time of greedy generation after a compile run: per-token latency (s)
  and generated tokens per second over the batch, and the bytes of the KV cache it allocates
  (windowed entries as rings); also returns the tokens [B, new_tokens]."""
  prompts = list(np.asarray(prompt_BP, np.int32))
  greedy = Sampling(temperature=0.0)
  run = lambda: generate(model, params, prompts, new_tokens, greedy, eos_id=None)
  out = run()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    best = min(best, time.perf_counter() - start)
  return {
      "latency_s_per_token": best / new_tokens,
      "tokens_per_s": len(prompts) * new_tokens / best,
      "batch": len(prompts), "prompt_len": prompt_BP.shape[1], "new_tokens": new_tokens,
      "kv_cache_bytes": kv_cache_bytes(model, len(prompts), prompt_BP.shape[1], new_tokens),
      "method": METHOD, "tokens": np.stack(out),
  }
