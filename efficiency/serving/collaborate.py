"""Collaborative decoding on device, batched, for any number of models: standard (every model
scores every token, one token drawn from r) and CoS, the alternate proposal framework.

CoS (one jitted `lax.while_loop` of rounds, each a `lax.switch` over which model proposes): the
proposer P drafts gamma_P tokens (one call that also scores the pending carried token, then a
`lax.scan` of one-token steps; `gamma` is one proposal length for all models or one per model,
the paper's gamma_1 .. gamma_n, so a large model can propose little more than its carried token
while a small one drafts ahead); every other model scores all pending tokens in one call each;
each row keeps its leading tokens with probability min(1, r / q_P) and at the first rejection
draws the residual of r - q_P. The last verifier, (P - 1) mod n, proposes next: when a row keeps
everything, that model's own next-token sample (drawn from its q, since r needs the other
models' logits there) is not emitted but carried as its proposal (scored by the others in the
next round); after a rejection it proposes too (the model that completed r there). With two
models the roles alternate every round, as in the paper's two-model schedule; with n, every
model proposes once in n rounds. Keeping with min(q, r) plus the residual gives exactly r:
outputs are those of standard collaborative decoding in distribution, token for token at
temperature 0.

Row b of the batch holds its committed length n[b], whether a carried token waits at slot n[b]
of its sequence buffer, and both models' caches, valid through n - 3 between rounds; a
rejection only moves n (stale entries are masked, then overwritten).

Ring-buffer cache entries (`efficiency.serving.cache`) are sized by how many positions at or
past a call's first position earlier calls wrote: none for standard decoding; for CoS a verifier
writes n-1 .. n+gamma and, as the next round's proposer, starts at n'-2 >= n-1, so gamma + 2
for the longest proposal (`cos_rollback`; a proposer writes up to n+gamma-1 and next verifies
from n'-1 >= n).

`gamma="auto"` plans first (`plan`): every model's call costs measured on this device and batch
(`request.call_costs`, once per process), acceptance from a short CoS probe of the same prompts,
and the per-model proposal lengths, or standard collaborative decoding, with the most expected
tokens/s (`acceptance.choose_cos`, whose Markov chain follows the schedule above); the request
then runs that fixed setting.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from efficiency.errors import ConfigError
from efficiency.serving import sampling as sampling_lib
from efficiency.serving.acceptance import GRID, Plan, accept, choose_cos, cos_positions
from efficiency.serving.cache import cache_bytes, init_cache
from efficiency.serving.forward import cached_forward
from efficiency.serving.request import (
  AUTO,
  NO_TOKEN,
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
from efficiency.serving.targets import Collaboration, proposal_probs, target_probs
from efficiency.serving.weights import to_decode_form

METHODS = ("standard", "cos")


def cos_rollback(gammas: tuple[int, ...]) -> int:
  """The rollback bound of every model's cache under CoS (see the module docstring)."""
  return max(gammas) + 2


def proposal_lengths(gamma: int | tuple[int, ...], num_models: int) -> tuple[int, ...]:
  """One proposal length per model from one for all, or one per model (each >= 1)."""
  gammas = tuple(gamma) if isinstance(gamma, (tuple, list)) else (gamma,) * num_models
  if len(gammas) != num_models:
    raise ConfigError(f"gamma={list(gammas)} gives {len(gammas)} proposal lengths for "
                      f"{num_models} models; give one, or one per model")
  for g in gammas:
    check_gamma(g)
  return gammas


def _prefill(
    models, params, tokens_BP: jnp.ndarray, lengths_B: jnp.ndarray, max_len: int, rollback: int
) -> tuple[list, list]:
  """Every model's logits at the prompts' last tokens [B, V] and cache after the prompts."""
  b = tokens_BP.shape[0]
  out = [cached_forward(m, p, tokens_BP, init_cache(m.config, b, max_len, rollback),
                        jnp.zeros(b, jnp.int32), lengths_B, (lengths_B - 1)[:, None])
         for m, p in zip(models, params, strict=True)]
  return [x[0][:, 0] for x in out], [x[1] for x in out]


def _standard(
    models: tuple, collab: Collaboration, max_new_tokens: int, max_len: int, params: tuple,
    tokens_BP: jnp.ndarray, lengths_B: jnp.ndarray, eos_id: jnp.ndarray, seed: jnp.ndarray,
    rows_B: jnp.ndarray,
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """New tokens [B, max_new_tokens] and the steps run (traced under jit)."""
  b = tokens_BP.shape[0]
  keys_B = row_keys(seed, rows_B)
  last, caches = _prefill(models, params, tokens_BP, lengths_B, max_len, rollback=0)
  greedy = collab.sampling.temperature == 0
  first_B = sampling_lib.draw(step_keys(keys_B, 0), target_probs(collab, last), greedy)
  out_BN = jnp.full((b, max_new_tokens), NO_TOKEN, jnp.int32).at[:, 0].set(first_B)

  def cond(state):
    return (state[0] < max_new_tokens) & ~state[4].all()

  def body(state):
    step, caches, out_BN, last_B, done_B = state
    logits, new_caches = [], []
    for m, p, c in zip(models, params, caches, strict=True):
      x_B1V, c = cached_forward(m, p, jnp.maximum(last_B, 0)[:, None], c, lengths_B + step - 1)
      logits.append(x_B1V[:, 0])
      new_caches.append(c)
    next_B = sampling_lib.draw(step_keys(keys_B, step), target_probs(collab, logits), greedy)
    next_B = jnp.where(done_B, NO_TOKEN, next_B)
    out_BN = jax.lax.dynamic_update_index_in_dim(out_BN, next_B, step, axis=1)
    return step + 1, new_caches, out_BN, next_B, done_B | (next_B == eos_id)

  state = (jnp.int32(1), caches, out_BN, first_B, first_B == eos_id)
  steps, _, out_BN, _, _ = jax.lax.while_loop(cond, body, state)
  return out_BN, jnp.stack([steps - 1, jnp.int32(0), jnp.int32(0),
                            (steps - 1) * len(models)])


def _cos(
    models: tuple, collab: Collaboration, gammas: tuple[int, ...], proposer: int,
    max_new_tokens: int, max_len: int, params: tuple, tokens_BP: jnp.ndarray,
    lengths_B: jnp.ndarray, eos_id: jnp.ndarray, seed: jnp.ndarray, rows_B: jnp.ndarray,
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """New tokens [B, max_new_tokens] and [rounds, verified, accepted, calls] (traced under
  jit)."""
  b, p = tokens_BP.shape
  num_models = len(models)
  keys_B = row_keys(seed, rows_B)
  rows = jnp.arange(b)
  _, caches = _prefill(models, params, tokens_BP, lengths_B, max_len, cos_rollback(gammas))
  seq_BL = jnp.zeros((b, max_len), jnp.int32).at[:, :p].set(tokens_BP)
  end_B = lengths_B + max_new_tokens
  greedy = collab.sampling.temperature == 0  # every distribution is one-hot

  def draft(pi, round_keys_B, seq_BL, n_B, carry_B, cache):
    """P scores x[n-2], x[n-1] and the carried token, then drafts gamma_P tokens: the pending
    tokens [B, gamma_P + 1] (carried first), P's logits for each, and P's cache."""
    start_B = jnp.maximum(n_B - 2, 0)
    feed_B3 = jax.vmap(lambda s, i: jax.lax.dynamic_slice_in_dim(s, i, 3))(seq_BL, start_B)
    logits_B3V, cache = cached_forward(models[pi], params[pi], feed_B3, cache, start_B)
    at_n_BV = logits_B3V[rows, n_B - 1 - start_B]
    first_BV = jnp.where(carry_B[:, None], logits_B3V[rows, n_B - start_B], at_n_BV)
    first_B = sampling_lib.draw(step_keys(round_keys_B, 0),
                                   proposal_probs(collab, pi, first_BV), greedy)
    h_B = carry_B.astype(jnp.int32)

    def step(state, i):
      cache, last_B = state
      x_B1V, cache = cached_forward(models[pi], params[pi], last_B[:, None], cache,
                                    n_B + h_B + i - 1)
      token_B = sampling_lib.draw(step_keys(round_keys_B, i),
                                     proposal_probs(collab, pi, x_B1V[:, 0]), greedy)
      return (cache, token_B), (token_B, x_B1V[:, 0])

    (cache, _), (rest_gB, rest_gBV) = jax.lax.scan(step, (cache, first_B),
                                                   jnp.arange(1, gammas[pi]))
    drafts_Bg = jnp.concatenate([first_B[:, None], rest_gB.T], axis=1)
    logits_BgV = jnp.concatenate([first_BV[:, None], rest_gBV.transpose(1, 0, 2)], axis=1)
    carried = carry_B[:, None]
    pending_Bg1 = jnp.where(carried, jnp.concatenate([seq_BL[rows, n_B][:, None], drafts_Bg], 1),
                            jnp.pad(drafts_Bg, ((0, 0), (0, 1))))
    logits_Bg1V = jnp.where(carried[..., None],
                            jnp.concatenate([at_n_BV[:, None], logits_BgV], 1),
                            jnp.concatenate([logits_BgV, logits_BgV[:, -1:]], 1))
    return pending_Bg1, logits_Bg1V, cache

  def round_of(pi, state):
    """One round with model pi proposing and every other model verifying; the last verifier
    ((pi - 1) mod n, the one that finds a rejection or carries a proposal) proposes next."""
    rounds, _, seq_BL, n_B, carry_B, done_B, caches, verified, accepted, calls = state
    gamma = gammas[pi]
    g = gamma + 1  # pending tokens at most: a carried one and gamma drafts
    window = jnp.arange(g)
    verifiers = [(pi + k) % num_models for k in range(1, num_models)]
    last = verifiers[-1]
    round_keys_B = step_keys(keys_B, rounds)
    pending_BG, proposer_BGV, cache_p = draft(pi, round_keys_B, seq_BL, n_B, carry_B, caches[pi])
    m_B = gamma + carry_B.astype(jnp.int32)
    verify_BH = jnp.concatenate([seq_BL[rows, n_B - 1][:, None], pending_BG], axis=1)
    logits, caches = [None] * num_models, list(caches)
    logits[pi], caches[pi] = proposer_BGV, cache_p
    for vi in verifiers:
      verifier_BHV, caches[vi] = cached_forward(
          models[vi], params[vi], verify_BH, caches[vi], n_B - 1)
      logits[vi] = verifier_BHV[:, :g]
    r_BGV = target_probs(collab, logits)
    q_BGV = proposal_probs(collab, pi, proposer_BGV)
    a_B, next_B = accept(round_keys_B, pending_BG, q_BGV, r_BGV, m_B, greedy)
    kept_all_B = a_B == m_B
    carried_B = sampling_lib.draw(
        step_keys(round_keys_B, g + 2), proposal_probs(collab, last, verifier_BHV[rows, m_B]),
        greedy)
    new_BG = jnp.where(window < a_B[:, None], pending_BG, next_B[:, None])
    count_B = jnp.where(kept_all_B, m_B, a_B + 1)
    eos_BG = (new_BG == eos_id) & (window < count_B[:, None])
    has_eos_B = eos_BG.any(-1)
    count_B = jnp.where(has_eos_B, jnp.argmax(eos_BG, -1) + 1, count_B)
    live_B = ~done_B
    count_B = jnp.where(live_B, jnp.minimum(count_B, end_B - n_B), 0)
    seq_BL = jax.vmap(lambda s, x, i: jax.lax.dynamic_update_slice_in_dim(s, x, i, 0))(
        seq_BL, new_BG, n_B
    )
    seq_BL = jax.vmap(lambda s, x, i: jax.lax.dynamic_update_slice_in_dim(s, x[None], i, 0))(
        seq_BL, carried_B, n_B + count_B
    )
    n_B = n_B + count_B
    done_B = done_B | has_eos_B | (n_B >= end_B)
    carry_B = kept_all_B & ~done_B
    verified += jnp.where(live_B, jnp.minimum(a_B + 1, m_B), 0).sum()
    accepted += jnp.where(live_B, a_B, 0).sum()
    return (rounds + 1, jnp.int32(last), seq_BL, n_B, carry_B, done_B, caches, verified,
            accepted, calls + gamma + num_models - 1)

  def cond(state):
    return ~state[5].all()

  def body(state):
    return jax.lax.switch(state[1], [functools.partial(round_of, k) for k in range(num_models)],
                          state)

  state = (jnp.int32(0), jnp.int32(proposer), seq_BL, lengths_B, jnp.zeros(b, bool),
           jnp.zeros(b, bool), caches, jnp.int32(0), jnp.int32(0), jnp.int32(0))
  rounds, _, seq_BL, n_B, _, _, _, verified, accepted, calls = jax.lax.while_loop(
      cond, body, state)
  out_BN = new_tokens(seq_BL, lengths_B, n_B, max_new_tokens)
  return out_BN, jnp.stack([rounds, verified, accepted, calls])


@functools.cache
def program(models: tuple, collab: Collaboration, method: str, gammas: tuple[int, ...],
            proposer: int, max_new_tokens: int, max_len: int):
  """The jitted decoding: (params tuple, tokens_BP, lengths_B, eos_id, seed, rows_B) -> (new
  tokens [B, max_new_tokens], [rounds or steps, verified, accepted, model calls])."""
  if method == "standard":
    return jax.jit(functools.partial(_standard, models, collab, max_new_tokens, max_len))
  return jax.jit(functools.partial(_cos, models, collab, gammas, proposer, max_new_tokens,
                                   max_len))


@dataclasses.dataclass
class Collaborated:
  """A request's new tokens per row; rounds (CoS: gamma_P proposer calls and one call of each
  other model each) or steps (standard: one call per model each), for the whole batch; drafts
  verified and kept over all rows; batched model calls after the prefill, all models together;
  and its time."""

  tokens: list[np.ndarray]
  method: str
  rounds: int
  gamma: tuple[int, ...]
  num_models: int
  verified: int
  accepted: int
  calls: int
  decode_s: float
  compile_s: float
  plan: Plan | None = None  # with gamma="auto"

  @property
  def acceptance(self) -> float | None:
    return self.accepted / self.verified if self.verified else None

  @property
  def tokens_per_s(self) -> float:
    return sum(map(len, self.tokens)) / self.decode_s

  def report(self) -> dict:
    """The plan (with gamma="auto") and the achieved tokens/s, for JSON reports."""
    return {**(self.plan.as_dict() if self.plan else
               {"plan": "standard" if self.method == "standard" else list(self.gamma)}),
            "achieved_tokens_per_s": self.tokens_per_s}


def collaborate(
    collab: Collaboration,
    members: list[tuple[nn.Module, dict]],
    prompts: list[np.ndarray],
    max_new_tokens: int,
    method: str,
    eos_id: int | None,
    gamma: int | tuple[int, ...] | str = 5,
    proposer: int = 0,
    seed: int = 0,
    first_row: int = 0,
) -> Collaborated:
  """Decodes every prompt in one batch from r = `collab` of `members` (in its order) by
  `method` (`standard`, or `cos` with `proposer` drafting first; `gamma` one proposal length,
  one per member, or "auto": the setting `plan` chooses, standard when CoS would not pay)."""
  if method not in METHODS:
    raise ConfigError(f"method={method!r} is unknown; valid choices: {list(METHODS)}")
  check_request(prompts, max_new_tokens)
  if gamma == AUTO:
    if method == "standard":
      gamma = 1  # unused by standard decoding
    else:
      members = [to_decode_form(m, p) for m, p in members]
      chosen = plan(collab, members, prompts, max_new_tokens, eos_id, proposer, seed, first_row)
      out = collaborate(collab, members, prompts, max_new_tokens,
                        "standard" if chosen.gamma is None else "cos", eos_id,
                        chosen.gamma or 1, proposer, seed, first_row)
      return dataclasses.replace(out, plan=chosen)
  gammas = proposal_lengths(gamma, len(members))
  if len(members) != collab.num_models:
    raise ConfigError(f"{len(members)} models given; the target needs {collab.num_models}")
  if method == "cos" and len(members) < 2:
    raise ConfigError(f"method=cos needs 2 or more models; got {len(members)}")
  check_vocabularies([m for m, _ in members], "collaborative decoding")
  if proposer not in range(len(members)):
    raise ConfigError(f"proposer={proposer} is invalid; valid choices: 0..{len(members) - 1}")
  tokens_BP, lengths_B = pad_prompts(prompts)
  max_len = tokens_BP.shape[1] + max_new_tokens + max(gammas) + 3
  bound = 0 if method == "standard" else cos_rollback(gammas)
  check_memory(sum(cache_bytes(m.config, len(prompts), max_len, bound) for m, _ in members),
               len(prompts), len(members) * (max(gammas) + 2), members[0][0].config.vocab_size)
  members = [to_decode_form(m, p) for m, p in members]
  models = tuple(m for m, _ in members)
  jitted = program(models, collab, method, gammas, proposer, max_new_tokens, max_len)
  args = jax.device_put((tuple(p for _, p in members), tokens_BP, lengths_B, eos_arg(eos_id),
                         np.int32(seed), row_ids(first_row, len(prompts))))
  compiled, compile_s = executable(jitted, *args)
  (out_BN, (rounds, verified, accepted, calls)), decode_s = timed(compiled, *args)  # one transfer
  return Collaborated([trim(row, eos_id) for row in out_BN], method, int(rounds), gammas,
                      len(members), int(verified), int(accepted), int(calls), decode_s,
                      compile_s)


PROBE_TOKENS, PROBE_GAMMA = 16, 3  # the acceptance probe: new tokens per prompt, its gamma


def plan(
    collab: Collaboration, members: list[tuple[nn.Module, dict]], prompts: list[np.ndarray],
    max_new_tokens: int, eos_id: int | None, proposer: int = 0, seed: int = 0,
    first_row: int = 0, batch: int | None = None, grid: tuple[int, ...] | None = None,
) -> Plan:
  """Per-model proposal lengths from `grid`, or standard collaborative decoding, with the most
  expected tokens/s for these members (in their decode forms) and prompts: call costs measured
  at `batch` rows (default: all the prompts in one batch), acceptance from CoS over
  PROBE_TOKENS tokens of every prompt."""
  batch, grid = batch or len(prompts), grid or GRID
  gammas = (max(grid),) * len(members)
  max_len = pad_prompts(prompts)[0].shape[1] + max_new_tokens + max(grid) + 3
  costs_s = tuple(call_costs(m, p, batch, cos_positions(grid), max_len, cos_rollback(gammas))
                  for m, p in members)
  probe = collaborate(collab, members, prompts, min(PROBE_TOKENS, max_new_tokens), "cos", eos_id,
                      PROBE_GAMMA, proposer, seed, first_row)
  return choose_cos(probe.acceptance or 0.0, costs_s, grid, rows=batch)
