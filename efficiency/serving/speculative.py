"""Speculative decoding on device, batched: a draft model proposes `gamma` tokens per round (one
`lax.scan` of cached draft steps), the target scores them in one call over gamma + 1 positions,
and every row accepts its own number of tokens, all in one jitted `lax.while_loop`.

Acceptance (Leviathan et al. 2023) per row: draft i (drawn from q_i) is kept with probability
min(1, p_i / q_i) while every earlier one was kept; at the first rejection the next token is
drawn from normalize(max(0, p - q)), and when all are kept from the target's p at the bonus
position. Kept-with-min(p, q) plus the residual is exactly p, so the output is the target's own
distribution under its sampling settings (the draft may sample differently: that changes speed
only).

Caches roll back by pointer: row b's committed length n[b] moves on by its accepted count + 1,
and entries past it are stale (masked, then overwritten). The target's cache is valid up to
n - 2 between rounds (a round feeds x[n-1] and the drafts); the draft's up to n - 3, since its
last draft is never fed, so each round's first draft call feeds x[n-2], x[n-1] again.

A round writes the target at n-1 .. n-1+gamma and the draft at n-2 .. n+gamma-2, and the next
round starts at n'-1 (n'-2) with n' >= n + 1: at most gamma positions at or past a call's first
position were written before (2 for the draft's first call after the prefill), so windowed
entries are rings of window + `rollback(gamma)` slots (`efficiency.serving.cache`).

`gamma="auto"` plans first (`plan`): both models' call costs measured on this device and batch
(`request.call_costs`, once per process), acceptance from a short probe of the same prompts,
and the gamma, or plain decoding of the target, with the most expected tokens/s
(`acceptance.choose_speculation`); the request then runs that fixed setting.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from efficiency.serving import sampling as sampling_lib
from efficiency.serving.acceptance import (
  GRID,
  Plan,
  accept,
  choose_speculation,
  speculation_positions,
)
from efficiency.serving.cache import cache_bytes, init_cache
from efficiency.serving.forward import cached_forward
from efficiency.serving.generate import run
from efficiency.serving.request import (
  AUTO,
  call_costs,
  check_gamma,
  check_memory,
  check_request,
  check_vocabularies,
  eos_arg,
  executable,
  new_tokens,
  pad_prompts,
  row_ids,
  row_keys,
  step_keys,
  timed,
  trim,
)
from efficiency.serving.sampling import Sampling
from efficiency.serving.weights import to_decode_form


def rollback(gamma: int) -> int:
  """The most positions at or past a call's first position that either model's earlier calls
  wrote (see above): the rollback bound its rings are sized for."""
  return gamma + 1


def _speculate(
    target: nn.Module, draft: nn.Module, sampling: Sampling, draft_sampling: Sampling,
    gamma: int, max_new_tokens: int, max_len: int,
    target_params: dict, draft_params: dict, tokens_BP: jnp.ndarray, lengths_B: jnp.ndarray,
    eos_id: jnp.ndarray, seed: jnp.ndarray, rows_B: jnp.ndarray,
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """New tokens [B, max_new_tokens] (NO_TOKEN past a row's end) and [rounds, verified drafts,
  accepted drafts] (traced under jit)."""
  b, p = tokens_BP.shape
  keys_B = row_keys(seed, rows_B)
  batch_rows = jnp.arange(b)
  zeros_B = jnp.zeros(b, jnp.int32)
  _, target_cache = cached_forward(
      target, target_params, tokens_BP, init_cache(target.config, b, max_len, rollback(gamma)),
      zeros_B, lengths_B,
  )
  _, draft_cache = cached_forward(
      draft, draft_params, tokens_BP, init_cache(draft.config, b, max_len, rollback(gamma)),
      zeros_B, lengths_B,
  )
  seq_BL = jnp.zeros((b, max_len), jnp.int32).at[:, :p].set(tokens_BP)
  end_B = lengths_B + max_new_tokens
  window = jnp.arange(gamma + 1)
  greedy = sampling.temperature == 0 and draft_sampling.temperature == 0

  def draft_tokens(round_keys_B, seq_BL, n_B, cache):
    """gamma drafts per row from the draft model, their q, and the draft's cache."""
    start_B = jnp.maximum(n_B - 2, 0)
    pair_B2 = jax.vmap(lambda s, i: jax.lax.dynamic_slice_in_dim(s, i, 2))(seq_BL, start_B)
    logits_B2V, cache = cached_forward(draft, draft_params, pair_B2, cache, start_B)
    q_BV = sampling_lib.probabilities(logits_B2V[batch_rows, n_B - 1 - start_B],
                                         draft_sampling)
    first_B = sampling_lib.draw(step_keys(round_keys_B, 0), q_BV, greedy)

    def step(carry, i):
      cache, last_B = carry
      logits_B1V, cache = cached_forward(draft, draft_params, last_B[:, None], cache, n_B + i - 1)
      q_BV = sampling_lib.probabilities(logits_B1V[:, 0], draft_sampling)
      token_B = sampling_lib.draw(step_keys(round_keys_B, i), q_BV, greedy)
      return (cache, token_B), (token_B, q_BV)

    (cache, _), (rest_gB, rest_gBV) = jax.lax.scan(step, (cache, first_B), jnp.arange(1, gamma))
    drafts_Bg = jnp.concatenate([first_B[:, None], rest_gB.T], axis=1)
    q_BgV = jnp.concatenate([q_BV[:, None], rest_gBV.transpose(1, 0, 2)], axis=1)
    return drafts_Bg, q_BgV, cache

  def cond(state):
    return ~state[3].all()

  def body(state):
    rounds, seq_BL, n_B, done_B, target_cache, draft_cache, verified, accepted = state
    round_keys_B = step_keys(keys_B, rounds)
    drafts_Bg, q_BgV, draft_cache = draft_tokens(round_keys_B, seq_BL, n_B, draft_cache)
    verify_BG = jnp.concatenate([seq_BL[batch_rows, n_B - 1][:, None], drafts_Bg], axis=1)
    logits_BGV, target_cache = cached_forward(
        target, target_params, verify_BG, target_cache, n_B - 1
    )
    p_BGV = sampling_lib.probabilities(logits_BGV, sampling)
    a_B, next_B = accept(round_keys_B, drafts_Bg, q_BgV, p_BGV, one_hot=greedy)
    new_BG = jnp.where(window < a_B[:, None], jnp.pad(drafts_Bg, ((0, 0), (0, 1))), next_B[:, None])
    count_B = a_B + 1
    eos_BG = (new_BG == eos_id) & (window < count_B[:, None])
    has_eos_B = eos_BG.any(-1)
    count_B = jnp.where(has_eos_B, jnp.argmax(eos_BG, -1) + 1, count_B)
    count_B = jnp.where(done_B, 0, jnp.minimum(count_B, end_B - n_B))
    seq_BL = jax.vmap(lambda s, x, i: jax.lax.dynamic_update_slice_in_dim(s, x, i, 0))(
        seq_BL, new_BG, n_B
    )
    live_B = ~done_B
    verified += jnp.where(live_B, jnp.minimum(a_B + 1, gamma), 0).sum()
    accepted += jnp.where(live_B, a_B, 0).sum()
    n_B = n_B + count_B
    done_B = done_B | has_eos_B | (n_B >= end_B)
    return rounds + 1, seq_BL, n_B, done_B, target_cache, draft_cache, verified, accepted

  state = (jnp.int32(0), seq_BL, lengths_B, jnp.zeros(b, bool), target_cache, draft_cache,
           jnp.int32(0), jnp.int32(0))
  rounds, seq_BL, n_B, _, _, _, verified, accepted = jax.lax.while_loop(cond, body, state)
  out_BN = new_tokens(seq_BL, lengths_B, n_B, max_new_tokens)
  return out_BN, jnp.stack([rounds, verified, accepted])


@functools.cache
def program(
    target: nn.Module, draft: nn.Module, sampling: Sampling, draft_sampling: Sampling,
    gamma: int, max_new_tokens: int, max_len: int,
):
  """The jitted speculative generation of two models in their decode forms: (target_params,
  draft_params, tokens_BP, lengths_B, eos_id, seed, rows_B) -> (new tokens
  [B, max_new_tokens], [rounds, verified, accepted])."""
  return jax.jit(functools.partial(
      _speculate, target, draft, sampling, draft_sampling, gamma, max_new_tokens, max_len))


@dataclasses.dataclass
class Speculated:
  """A request's new tokens per row, its rounds (one target call and gamma draft calls each, for
  the whole batch), drafts verified and kept (over all rows), and its time."""

  tokens: list[np.ndarray]
  rounds: int
  gamma: int  # 0: the planner chose plain decoding of the target (rounds are its steps)
  verified: int
  accepted: int
  decode_s: float
  compile_s: float
  plan: Plan | None = None  # with gamma="auto"

  @property
  def acceptance(self) -> float | None:
    return self.accepted / self.verified if self.verified else None

  @property
  def calls(self) -> dict[str, int]:
    """Batched model calls after the prefill."""
    return {"target": self.rounds, "draft": self.rounds * self.gamma}

  def report(self) -> dict:
    """The plan (with gamma="auto") and the achieved tokens/s, for JSON reports."""
    return {**(self.plan.as_dict() if self.plan else {"plan": [self.gamma]}),
            "achieved_tokens_per_s": self.tokens_per_s}

  @property
  def tokens_per_s(self) -> float:
    return sum(map(len, self.tokens)) / self.decode_s


def speculate(
    target: tuple[nn.Module, dict],
    draft: tuple[nn.Module, dict],
    prompts: list[np.ndarray],
    max_new_tokens: int,
    sampling: Sampling,
    gamma: int | str,
    eos_id: int | None,
    seed: int = 0,
    first_row: int = 0,
    draft_sampling: Sampling | None = None,
) -> Speculated:
  """Decodes every prompt in one batch: the target's distribution under `sampling`, with
  `draft` proposing `gamma` tokens per round (under `draft_sampling`, default `sampling`), or
  with gamma="auto" the setting `plan` chooses (plain decoding of the target when speculation
  would not pay). Models not in their decode forms are converted first
  (`weights.to_decode_form`)."""
  check_request(prompts, max_new_tokens)
  if gamma == AUTO:
    target, draft = to_decode_form(*target), to_decode_form(*draft)
    chosen = plan(target, draft, prompts, max_new_tokens, sampling, eos_id, seed, first_row,
                  draft_sampling)
    if chosen.gamma is None:
      out = run(*target, prompts, max_new_tokens, sampling, eos_id, seed, first_row)
      return Speculated(out.tokens, max(map(len, out.tokens)), 0, 0, 0, out.decode_s,
                        out.compile_s, chosen)
    out = speculate(target, draft, prompts, max_new_tokens, sampling, chosen.gamma[0], eos_id,
                    seed, first_row, draft_sampling)
    return dataclasses.replace(out, plan=chosen)
  check_gamma(gamma)
  check_vocabularies((target[0], draft[0]), "speculative decoding")
  tokens_BP, lengths_B = pad_prompts(prompts)
  max_len = tokens_BP.shape[1] + max_new_tokens + gamma + 1
  check_memory(sum(cache_bytes(m.config, len(prompts), max_len, rollback(gamma))
                   for m in (target[0], draft[0])),
               len(prompts), 2 * (gamma + 2), target[0].config.vocab_size)
  target, draft = to_decode_form(*target), to_decode_form(*draft)
  jitted = program(target[0], draft[0], sampling, draft_sampling or sampling, gamma,
                   max_new_tokens, max_len)
  args = jax.device_put((target[1], draft[1], tokens_BP, lengths_B, eos_arg(eos_id),
                         np.int32(seed), row_ids(first_row, len(prompts))))
  compiled, compile_s = executable(jitted, *args)
  (out_BN, (rounds, verified, accepted)), decode_s = timed(compiled, *args)  # one transfer
  return Speculated([trim(row, eos_id) for row in out_BN], int(rounds), gamma, int(verified),
                    int(accepted), decode_s, compile_s)


PROBE_TOKENS, PROBE_GAMMA = 16, 3  # the acceptance probe: new tokens per prompt, its gamma


def plan(
    target: tuple[nn.Module, dict], draft: tuple[nn.Module, dict], prompts: list[np.ndarray],
    max_new_tokens: int, sampling: Sampling, eos_id: int | None, seed: int = 0,
    first_row: int = 0, draft_sampling: Sampling | None = None, batch: int | None = None,
    grid: tuple[int, ...] | None = None,
) -> Plan:
  """The gamma in `grid`, or plain decoding, with the most expected tokens/s for these models
  (in their decode forms) and prompts: call costs measured at `batch` rows (default: all the
  prompts in one batch), acceptance from speculating PROBE_TOKENS tokens of every prompt."""
  batch, grid = batch or len(prompts), grid or GRID
  max_len = pad_prompts(prompts)[0].shape[1] + max_new_tokens + max(grid) + 1
  target_widths, draft_widths = speculation_positions(grid)
  target_s = call_costs(*target, batch, target_widths, max_len, rollback(max(grid)))
  draft_s = call_costs(*draft, batch, draft_widths, max_len, rollback(max(grid)))
  probe = speculate(target, draft, prompts, min(PROBE_TOKENS, max_new_tokens), sampling,
                    PROBE_GAMMA, eos_id, seed, first_row, draft_sampling)
  return choose_speculation(probe.acceptance or 0.0, target_s, draft_s, grid, rows=batch)
