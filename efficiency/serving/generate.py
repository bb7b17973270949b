"""Batched autoregressive generation on device: one jitted program runs the prefill of the
right-padded prompts and the whole generation (a `lax.while_loop` of cached one-token steps,
each row at its own position), samples on device from a `jax.random` key per row, and stops each
row at EOS. The host sends the prompts once and reads the tokens back once per request.

Row b of a request draws its tokens from `fold_in(key(seed), first_row + b)` (see
`efficiency.serving.request`).

Each call starts at its row's pointer and the prompt padding is not written into ring buffers,
so windowed cache entries are rings of `window` slots (`ROLLBACK` = 0) whatever the context.
"""

import dataclasses
import functools
from collections.abc import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from efficiency.errors import ConfigError
from efficiency.serving import sampling as sampling_lib
from efficiency.serving.cache import cache_bytes, init_cache
from efficiency.serving.forward import bucket, cached_forward
from efficiency.serving.request import (
  NO_TOKEN,
  check_memory,
  check_request,
  eos_arg,
  executable,
  pad_prompts,
  row_ids,
  row_keys,
  step_keys,
  timed,
  trim,
)
from efficiency.serving.sampling import Sampling
from efficiency.serving.weights import to_decode_form

ROLLBACK = 0  # no position at or past a call's start is written before it (serving.cache)


def _start(
    model: nn.Module, sampling: Sampling, max_new_tokens: int, max_len: int,
    params: dict, tokens_BP: jnp.ndarray, lengths_B: jnp.ndarray, eos_id: jnp.ndarray,
    seed: jnp.ndarray, rows_B: jnp.ndarray,
) -> tuple:
  """The decode state after the prefill and the first new token: (step, cache, out_BN,
  last_B, done_B, keys_B) (traced under jit)."""
  b = tokens_BP.shape[0]
  keys_B = row_keys(seed, rows_B)
  cache = init_cache(model.config, b, max_len, ROLLBACK)
  logits_B1V, cache = cached_forward(
      model, params, tokens_BP, cache, jnp.zeros(b, jnp.int32), lengths_B,
      logits_at_BK=(lengths_B - 1)[:, None],
  )
  first_B = sampling_lib.sample(step_keys(keys_B, 0), logits_B1V[:, 0], sampling)
  out_BN = jnp.full((b, max_new_tokens), NO_TOKEN, jnp.int32).at[:, 0].set(first_B)
  return jnp.int32(1), cache, out_BN, first_B, first_B == eos_id, keys_B


def _advance(
    model: nn.Module, sampling: Sampling, params: dict, lengths_B: jnp.ndarray,
    eos_id: jnp.ndarray, state: tuple, until: jnp.ndarray,
) -> tuple:
  """The decode state after the steps up to `until` new tokens (or every row's EOS): a
  `lax.while_loop` of cached one-token steps (traced under jit)."""

  def cond(state):
    step, _, _, _, done_B, _ = state
    return (step < until) & ~done_B.all()

  def body(state):
    step, cache, out_BN, last_B, done_B, keys_B = state
    positions_B = lengths_B + step - 1
    logits_B1V, cache = cached_forward(
        model, params, jnp.maximum(last_B, 0)[:, None], cache, positions_B
    )
    next_B = sampling_lib.sample(step_keys(keys_B, step), logits_B1V[:, 0], sampling)
    next_B = jnp.where(done_B, NO_TOKEN, next_B)
    out_BN = jax.lax.dynamic_update_index_in_dim(out_BN, next_B, step, axis=1)
    return step + 1, cache, out_BN, next_B, done_B | (next_B == eos_id), keys_B

  return jax.lax.while_loop(cond, body, state)


def _generate(
    model: nn.Module, sampling: Sampling, max_new_tokens: int, max_len: int,
    params: dict, tokens_BP: jnp.ndarray, lengths_B: jnp.ndarray, eos_id: jnp.ndarray,
    seed: jnp.ndarray, rows_B: jnp.ndarray,
) -> jnp.ndarray:
  """New tokens [B, max_new_tokens], NO_TOKEN after a row's EOS (traced under jit)."""
  state = _start(model, sampling, max_new_tokens, max_len, params, tokens_BP, lengths_B,
                 eos_id, seed, rows_B)
  state = _advance(model, sampling, params, lengths_B, eos_id, state, jnp.int32(max_new_tokens))
  return state[2]


@functools.cache
def program(model: nn.Module, sampling: Sampling, max_new_tokens: int, max_len: int):
  """The jitted generation of `model` (in its decode form, `weights.to_decode_form`) for these
  settings: (params, tokens_BP, lengths_B, eos_id, seed, rows_B) -> new tokens
  [B, max_new_tokens]. It only reads the params."""
  return jax.jit(functools.partial(_generate, model, sampling, max_new_tokens, max_len))


@functools.cache
def stream_programs(model: nn.Module, sampling: Sampling, max_new_tokens: int, max_len: int,
                    chunk: int):
  """The jitted pieces of a streamed generation of `model` (in its decode form): `start`
  (params, tokens_BP, lengths_B, eos_id, seed, rows_B) -> state, and `advance` (params,
  lengths_B, eos_id, state, until) -> (state, the [B, chunk] tokens ending at the step reached,
  that step, whether every row is done), the state donated."""

  def advance(params, lengths_B, eos_id, state, until):
    state = _advance(model, sampling, params, lengths_B, eos_id, state, until)
    step, out_BN, done_B = state[0], state[2], state[4]
    chunk_BC = jax.lax.dynamic_slice_in_dim(out_BN, jnp.maximum(step - chunk, 0), chunk, axis=1)
    return state, chunk_BC, step, done_B.all()

  return (jax.jit(functools.partial(_start, model, sampling, max_new_tokens, max_len)),
          jax.jit(advance, donate_argnums=3))


def kv_cache_bytes(model: nn.Module, batch: int, prompt_len: int, max_new_tokens: int) -> int:
  """Bytes of the KV cache `run` allocates for `batch` prompts of at most `prompt_len` tokens."""
  return cache_bytes(model.config, batch, bucket(prompt_len) + max_new_tokens, ROLLBACK)


def _request(
    model: nn.Module, params: dict, prompts: list[np.ndarray], max_new_tokens: int,
    eos_id: int | None, seed: int, first_row: int,
) -> tuple[nn.Module, tuple, int]:
  """The model in its decode form, the checked request on device as the programs take it
  (params, tokens_BP, lengths_B, eos_id, seed, rows_B), and its cache length; refused before
  anything is allocated when its cache and logits would not fit the device."""
  check_request(prompts, max_new_tokens)
  tokens_BP, lengths_B = pad_prompts(prompts)
  check_memory(kv_cache_bytes(model, len(prompts), tokens_BP.shape[1], max_new_tokens),
               len(prompts), 1, model.config.vocab_size)
  model, params = to_decode_form(model, params)
  args = jax.device_put((params, tokens_BP, lengths_B, eos_arg(eos_id), np.int32(seed),
                         row_ids(first_row, len(prompts))))
  return model, args, tokens_BP.shape[1] + max_new_tokens


@dataclasses.dataclass
class Generated:
  """A request's new tokens per row, and its time: decoding (prefill included) and compiling."""

  tokens: list[np.ndarray]
  decode_s: float
  compile_s: float

  @property
  def tokens_per_s(self) -> float:
    return sum(map(len, self.tokens)) / self.decode_s


def run(
    model: nn.Module,
    params: dict,
    prompts: list[np.ndarray],
    max_new_tokens: int,
    sampling: Sampling,
    eos_id: int | None,
    seed: int = 0,
    first_row: int = 0,
) -> Generated:
  """Decodes every prompt in one batch on device; see the module docstring. A model not in its
  decode form is converted first (`weights.to_decode_form`; load it converted to do that once)."""
  model, args, max_len = _request(model, params, prompts, max_new_tokens, eos_id, seed,
                                  first_row)
  compiled, compile_s = executable(program(model, sampling, max_new_tokens, max_len), *args)
  out_BN, decode_s = timed(compiled, *args)  # the request's one device-to-host transfer
  return Generated([trim(row, eos_id) for row in out_BN], decode_s, compile_s)


def generate(
    model: nn.Module,
    params: dict,
    prompts: list[np.ndarray],
    max_new_tokens: int,
    sampling: Sampling,
    eos_id: int | None,
    seed: int = 0,
    first_row: int = 0,
) -> list[np.ndarray]:
  """New tokens for each prompt (up to and including EOS, at most max_new_tokens)."""
  return run(model, params, prompts, max_new_tokens, sampling, eos_id, seed, first_row).tokens


def stream(
    model: nn.Module,
    params: dict,
    prompts: list[np.ndarray],
    max_new_tokens: int,
    sampling: Sampling,
    eos_id: int | None,
    chunk: int,
    seed: int = 0,
    first_row: int = 0,
) -> Iterator[list[np.ndarray]]:
  """Decodes every prompt in one batch on device like `run` (the same tokens), handing each row's
  new tokens to the host every `chunk` steps: yields, per chunk, each row's tokens of that chunk
  (none once a row has stopped), one device-to-host transfer each."""
  if chunk < 1:
    raise ConfigError(f"stream chunk={chunk} must be >= 1 token")
  model, args, max_len = _request(model, params, prompts, max_new_tokens, eos_id, seed,
                                  first_row)
  chunk = min(chunk, max_new_tokens)
  start, advance = stream_programs(model, sampling, max_new_tokens, max_len, chunk)
  params, tokens_BP, lengths_B, eos, seed_arg, rows_B = args
  state = start(params, tokens_BP, lengths_B, eos, seed_arg, rows_B)
  stopped = np.zeros(len(prompts), bool)
  sent, done = 0, False
  while sent < max_new_tokens and not done:
    until = min(sent + chunk, max_new_tokens)
    state, chunk_BC, step, done = advance(params, lengths_B, eos, state, np.int32(until))
    chunk_BC, step, done = jax.device_get((chunk_BC, step, done))  # one transfer per chunk
    first = max(int(step) - chunk, 0)  # the step of the chunk's first column
    pieces = []
    for b, row in enumerate(chunk_BC[:, sent - first : int(step) - first]):
      row = np.asarray([] if stopped[b] else trim(row, eos_id), np.int32)
      stopped[b] |= len(row) < int(step) - sent or (eos_id is not None and eos_id in row)
      pieces.append(row)
    yield pieces
    sent = int(step)
