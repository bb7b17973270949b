"""What every decoding request shares: its checks (one place, before anything is allocated),
its prompts padded into one batch, the rows' random keys, the executable compiled once per
shape, and the one timing path (`timed`: the compiled request's wall time up to its one
device-to-host transfer, compilation excluded), and the calibration the speculation planner
reads (`call_costs`: a model's batched call over k positions, timed on this device).

Row b of a request draws its tokens from `fold_in(key(seed), first_row + b)`, so a prompt gets
the same tokens whatever batch it decodes in.
"""

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from efficiency.errors import ConfigError
from efficiency.serving.cache import init_cache
from efficiency.serving.forward import bucket, cached_forward

NO_TOKEN = -1  # fills the output after a row stops
NEVER = -2  # the EOS id when there is none (no sampled token equals it)


AUTO = "auto"  # proposal lengths chosen by the planner (`acceptance.choose_*`)


def check_gamma(gamma: int) -> None:
  """Drafts per proposer turn: at least one."""
  if gamma < 1:
    raise ConfigError(f"gamma={gamma} must be >= 1")


def parse_gamma(values: list[str], num_models: int) -> str | int | tuple[int, ...]:
  """A --gamma flag's values: `auto`, one positive integer for every model, or one per model."""
  text = ",".join(values)
  if [v.strip() for v in values] == [AUTO]:
    return AUTO
  try:
    gammas = [int(v) for v in values]
  except ValueError:
    gammas = []
  choices = "auto or a positive integer" + (
      f", or {num_models} comma-separated positive integers (one per model)"
      if num_models > 1 else "")
  if not gammas or min(gammas) < 1 or (num_models == 1 and len(gammas) > 1):
    raise ConfigError(f"gamma={text} is invalid; valid choices: {choices}")
  if len(gammas) not in (1, num_models):
    raise ConfigError(f"gamma={text} gives {len(gammas)} proposal lengths for {num_models} "
                      "models; give one, or one per model (or auto)")
  return gammas[0] if len(gammas) == 1 else tuple(gammas)


def check_vocabularies(models, what: str) -> None:
  """Models decoding together score the same token ids."""
  vocabs = [m.config.vocab_size for m in models]
  if len(set(vocabs)) > 1:
    raise ConfigError(
        f"models have different vocabularies (vocab_size {vocabs}); {what} needs one shared "
        "tokenizer"
    )


def check_request(prompts: list[np.ndarray], max_new_tokens: int) -> None:
  """At least one prompt, each with a token, and at least one new token."""
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ConfigError("every prompt needs at least one token")
  if max_new_tokens < 1:
    raise ConfigError(f"max_new_tokens={max_new_tokens} must be >= 1")


def check_context(max_new_tokens: int, context: int) -> None:
  """New tokens fit the model's context (the sequence length it trained at)."""
  if max_new_tokens > context:
    raise ConfigError(
        f"max_new_tokens={max_new_tokens} exceeds the model's context of {context} tokens"
    )


def fit_prompts(
    prompts: list[np.ndarray], max_new_tokens: int, context: int, truncate: bool = False
) -> list[np.ndarray]:
  """The prompts, checked against the model's context (the sequence length it trained at):
  max_new_tokens must fit it, and a prompt longer than it is refused, or with `truncate` cut to
  its last max(context - max_new_tokens, 1) tokens with a warning on stderr."""
  check_context(max_new_tokens, context)
  keep = max(context - max_new_tokens, 1)
  out = []
  for i, p in enumerate(prompts):
    if len(p) > context:
      if not truncate:
        raise ConfigError(
            f"prompt {i} has {len(p)} tokens, more than the model's context of {context} "
            f"tokens; shorten it, or pass --truncate_prompt to keep its last {keep} tokens"
        )
      print(f"warning: prompt {i} has {len(p)} tokens, more than the model's context of "
            f"{context}; keeping its last {keep}", file=sys.stderr)
      p = p[-keep:]
    out.append(np.asarray(p, np.int32))
  return out


def device_bytes_free() -> int:
  """Bytes the first device can still allocate: its allocator's limit less what is in use
  (accelerators), else the host's available memory (CPU)."""
  stats = jax.devices()[0].memory_stats() or {}
  if "bytes_limit" in stats:
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
  return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(cache_bytes: int, batch: int, logits_positions: int, vocab_size: int) -> None:
  """Refuses a request whose KV cache (`cache_bytes`, all models) and float32 logits
  (`logits_positions` per row, all models' calls of a step) would not fit the device's free
  memory, before anything is allocated."""
  logits_bytes = batch * logits_positions * vocab_size * 4
  need, free = cache_bytes + logits_bytes, device_bytes_free()
  if need > free:
    raise ConfigError(
        f"the request needs {need:,} bytes ({cache_bytes:,} of KV cache and {logits_bytes:,} of "
        f"logits for batch={batch}) but the device has {free:,} free; lower the batch, the "
        "prompt length or max_new_tokens"
    )


def pad_prompts(prompts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Right-padded prompts [B, bucket(max length)] (few shapes compile) and their lengths [B]."""
  lengths_B = np.array([len(p) for p in prompts], np.int32)
  tokens_BP = np.zeros((len(prompts), bucket(int(lengths_B.max()))), np.int32)
  for i, p in enumerate(prompts):
    tokens_BP[i, : len(p)] = p
  return tokens_BP, lengths_B


def row_ids(first_row: int, batch: int) -> np.ndarray:
  """The rows' indices in the whole request list, which pick their keys (see `row_keys`)."""
  return np.arange(first_row, first_row + batch, dtype=np.int32)


def row_keys(seed: jnp.ndarray, rows_B: jnp.ndarray) -> jnp.ndarray:
  """One key per row: fold_in(key(seed), rows_B[b]) (traced under jit)."""
  return jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed), rows_B)


def step_keys(keys_B: jnp.ndarray, step: jnp.ndarray) -> jnp.ndarray:
  """Each row's key for one decode step."""
  return jax.vmap(jax.random.fold_in, (0, None))(keys_B, step)


def new_tokens(seq_BL: jax.Array, lengths_B: jax.Array, ends_B: jax.Array,
               max_new_tokens: int) -> jax.Array:
  """[B, max_new_tokens]: each row's tokens after its prompt (which ends at `lengths_B`), up to
  its end `ends_B`, then NO_TOKEN."""
  out_BN = jax.vmap(lambda s, i: jax.lax.dynamic_slice_in_dim(s, i, max_new_tokens))(
      seq_BL, lengths_B
  )
  return jnp.where(jnp.arange(max_new_tokens) < (ends_B - lengths_B)[:, None], out_BN, NO_TOKEN)


def trim(tokens_N: np.ndarray, eos_id: int | None) -> np.ndarray:
  """A row's new tokens: up to the first NO_TOKEN, and up to and including EOS."""
  stop = np.flatnonzero(tokens_N == NO_TOKEN)
  tokens_N = tokens_N[: stop[0]] if len(stop) else tokens_N
  if eos_id is not None:
    eos = np.flatnonzero(tokens_N == eos_id)
    tokens_N = tokens_N[: eos[0] + 1] if len(eos) else tokens_N
  return tokens_N.astype(np.int32)


def eos_arg(eos_id: int | None) -> np.int32:
  """The EOS id as the programs take it (NEVER when there is none)."""
  return np.int32(NEVER if eos_id is None else eos_id)


_EXECUTABLES: dict = {}


def executable(jitted, *args) -> tuple:
  """The compiled executable of `jitted` for these arguments' shapes (compiled once, cached) and
  the seconds its compilation took now (0 when cached)."""
  leaves, treedef = jax.tree.flatten(args)
  key = (jitted, treedef, tuple((x.shape, x.dtype) for x in leaves))
  if key in _EXECUTABLES:
    return _EXECUTABLES[key], 0.0
  start = time.perf_counter()
  _EXECUTABLES[key] = jitted.lower(*args).compile()
  return _EXECUTABLES[key], time.perf_counter() - start


def timed(compiled, *args) -> tuple:
  """The compiled request's outputs, read to the host in one transfer, and its wall seconds
  (the one timing path of every decoder, benchmark and metric)."""
  start = time.perf_counter()
  out = jax.device_get(compiled(*args))
  return out, time.perf_counter() - start


CALLS_PER_TIMING = 8  # calls in one timed on-device loop (dispatch amortized as in a decoder)
_COSTS: dict = {}


def _measure(model, params: dict, batch: int, width: int, max_len: int, rollback: int) -> float:
  """Seconds of one batched cached call of `model` over `width` positions (best of 3 timed
  loops of CALLS_PER_TIMING calls, after the compile and a warm-up run)."""

  def loop(params, cache):
    start_B = jnp.full((batch,), max(max_len // 2 - width, 0), jnp.int32)
    tokens_BT = jnp.ones((batch, width), jnp.int32)

    def body(i, carry):
      total, cache = carry
      logits_BTV, cache = cached_forward(model, params, (tokens_BT + i) % 2, cache, start_B)
      return total + logits_BTV[:, -1, 0].sum(), cache

    return jax.lax.fori_loop(0, CALLS_PER_TIMING, body, (jnp.float32(0), cache))[0]

  args = jax.device_put((params, init_cache(model.config, batch, max_len, rollback)))
  compiled = jax.jit(loop).lower(*args).compile()
  timed(compiled, *args)
  return min(timed(compiled, *args)[1] for _ in range(3)) / CALLS_PER_TIMING


def measured_widths(widths: tuple[int, ...]) -> tuple[int, ...]:
  """The call widths `call_costs` times: those up to 3 and the widest (the rest interpolate)."""
  return tuple(sorted({w for w in widths if w <= 3} | {max(widths)}))


def call_costs(model, params: dict, batch: int, widths: tuple[int, ...], max_len: int,
               rollback: int) -> dict[int, float]:
  """Seconds of one batched call of a model (in its decode form) over each of `widths`
  positions with a cache of `max_len`, on this device: `measured_widths` timed once per model,
  batch, width, cache length and device for the process (then read from a cache), the widths
  between them interpolated linearly (a call's cost is close to affine in its width)."""
  device = jax.devices()[0]
  known = {}
  for width in measured_widths(widths):
    key = (model, batch, width, max_len, rollback, device.platform, device.device_kind)
    if key not in _COSTS:
      _COSTS[key] = _measure(model, params, batch, width, max_len, rollback)
    known[width] = _COSTS[key]
  xs = sorted(known)
  return {w: float(np.interp(w, xs, [known[x] for x in xs])) for w in widths}
