"""Speculative acceptance on device, batched (Leviathan et al. 2023): a token x drafted from q is
kept with probability min(1, p(x) / q(x)) while every earlier draft was kept; at the first
rejection the next token is drawn from normalize(max(0, p - q)), and when all are kept from p at
the bonus position. Keeping with min(p, q) plus the residual gives exactly p for any q, so
speculative decoding and CoS sample exactly from their target. The float64 reference is
`tests/efficiency/serving/reference.py` (`residual`, `accept_or_resample`).

The planner (`choose_speculation`, `choose_cos`) is the host-side arithmetic of what acceptance
buys: expected tokens per round from a per-token acceptance a and the proposal lengths, cost per
round from measured call costs (`request.call_costs`), and the proposal lengths, or no
speculation ("standard"), with the most expected tokens per second."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from efficiency.serving.request import step_keys
from efficiency.serving.sampling import draw


def accept(
    keys_B: jnp.ndarray, drafts_Bg: jnp.ndarray, q_BgV: jnp.ndarray, p_BGV: jnp.ndarray,
    lengths_B: jnp.ndarray | None = None, one_hot: bool = False,
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Per row: how many leading drafts are kept (a, 0..gamma) and the token after them (from
  the residual at the first rejection, from p at the bonus position when all are kept). Only
  the first lengths_B[b] drafts of row b count (all when None). `one_hot`: p and q are one-hot
  (greedy), so a draft is kept iff p has it, and no uniform is drawn."""
  b, gamma = drafts_Bg.shape
  p_draft_Bg = jnp.take_along_axis(p_BGV[:, :gamma], drafts_Bg[..., None], -1)[..., 0]
  q_draft_Bg = jnp.take_along_axis(q_BgV, drafts_Bg[..., None], -1)[..., 0]
  if one_hot:
    u_Bg = jnp.zeros((b, gamma))
  else:
    u_Bg = jax.vmap(lambda k: jax.random.uniform(k, (gamma,)))(step_keys(keys_B, gamma))
  kept_Bg = u_Bg * q_draft_Bg < p_draft_Bg
  if lengths_B is not None:
    kept_Bg &= jnp.arange(gamma) < lengths_B[:, None]
  a_B = jnp.cumprod(kept_Bg.astype(jnp.int32), axis=-1).sum(-1)
  rows_B = jnp.arange(b)
  p_BV = p_BGV[rows_B, a_B]
  q_BV = jnp.concatenate([q_BgV, jnp.zeros_like(q_BgV[:, :1])], axis=1)[rows_B, a_B]
  if lengths_B is not None:
    q_BV = jnp.where((a_B < lengths_B)[:, None], q_BV, 0.0)
  residual_BV = jnp.maximum(p_BV - q_BV, 0.0)
  total_B1 = residual_BV.sum(-1, keepdims=True)
  residual_BV = jnp.where(total_B1 > 0, residual_BV / jnp.where(total_B1 > 0, total_B1, 1), p_BV)
  return a_B, draw(step_keys(keys_B, gamma + 1), residual_BV, one_hot)


STANDARD = "standard"  # the plan without speculation
GRID = (1, 2, 3, 4, 6, 8)  # the proposal lengths the planner considers, per model
MARGIN = 0.05  # speculation is chosen only when predicted this much faster than standard


@dataclasses.dataclass(frozen=True)
class Plan:
  """The chosen proposal lengths (one per proposer) or None for standard decoding, the predicted
  tokens/s of the choice and of standard decoding, and what it was chosen from: the acceptance
  estimate and the measured seconds of each model's batched call over k positions."""

  gamma: tuple[int, ...] | None
  predicted_tokens_per_s: float
  standard_tokens_per_s: float
  acceptance: float
  costs_s: tuple[dict[int, float], ...]

  @property
  def choice(self) -> str | tuple[int, ...]:
    return STANDARD if self.gamma is None else self.gamma

  def as_dict(self) -> dict:
    return {"plan": STANDARD if self.gamma is None else list(self.gamma),
            "predicted_tokens_per_s": self.predicted_tokens_per_s,
            "standard_predicted_tokens_per_s": self.standard_tokens_per_s,
            "acceptance_estimate": self.acceptance,
            "call_costs_s": [{str(k): v for k, v in sorted(c.items())} for c in self.costs_s]}


def expected_tokens(a: float, m: int) -> float:
  """Expected tokens a round emits when m proposals are checked in order, each kept with
  probability a while all earlier ones were: E[min(kept + 1, m + 1)] = (1 - a^(m+1)) / (1 - a)
  for speculative decoding with gamma = m (the rejected one is replaced by a residual draw, and
  the bonus token follows when all are kept)."""
  return m + 1.0 if a >= 1 else (1 - a ** (m + 1)) / (1 - a)


def speculation_rate(a: float, gamma: int, target_s: dict[int, float],
                     draft_s: dict[int, float]) -> float:
  """Expected tokens/s of speculative decoding (`speculative._speculate`): a round is one draft
  call over 2 positions, gamma - 1 one-token draft steps and one target call over gamma + 1."""
  cost = draft_s[2] + (gamma - 1) * draft_s[1] + target_s[gamma + 1]
  return expected_tokens(a, gamma) / cost


def cos_rate(a: float, gammas: tuple[int, ...], costs_s: tuple[dict[int, float], ...]) -> float:
  """Expected tokens/s of CoS as `collaborate._cos` schedules it, a Markov chain over (proposer
  P, carry c): P drafts gamma_P tokens (one call over 3 positions, then gamma_P - 1 one-token
  steps), every other model verifies in one call over gamma_P + 2 positions, and the m = gamma_P
  + c pending tokens (a carried one first) are kept in order with probability a each. The round
  emits E[min(kept + 1, m)] = (1 - a^m) / (1 - a) tokens; with probability a^m all are kept and
  the last verifier's own sample is carried (c' = 1); either way the last verifier, (P - 1) mod
  n, proposes next. Tokens/s = sum_s pi(s) tokens(s) / sum_s pi(s) cost(s) over the chain's
  stationary distribution pi (renewal-reward)."""
  n = len(gammas)
  states = [(p, c) for p in range(n) for c in (0, 1)]
  move = np.zeros((2 * n, 2 * n))
  tokens, cost = np.zeros(2 * n), np.zeros(2 * n)
  for i, (p, c) in enumerate(states):
    m = gammas[p] + c
    kept_all = a ** m
    tokens[i] = m if a >= 1 else (1 - kept_all) / (1 - a)
    cost[i] = (costs_s[p][3] + (gammas[p] - 1) * costs_s[p][1]
               + sum(costs_s[v][gammas[p] + 2] for v in range(n) if v != p))
    nxt = (p - 1) % n
    move[i, 2 * nxt + 1] += kept_all
    move[i, 2 * nxt] += 1 - kept_all
  pi = np.full(2 * n, 1 / (2 * n))
  for _ in range(200):  # power iteration; the chain is small (the proposer cycle has period n)
    pi = 0.5 * (pi + pi @ move)
  return float(pi @ tokens / (pi @ cost))


def _choose(rates: dict[tuple[int, ...], float], standard: float, a: float, costs_s: tuple,
            margin: float, rows: int) -> Plan:
  """The best of `rates` (tokens/s of one row) or standard; predictions over `rows` rows."""
  rates, standard = {g: rows * r for g, r in rates.items()}, rows * standard
  best = max(rates, key=rates.get)
  if rates[best] < standard * (1 + margin):
    return Plan(None, standard, standard, a, costs_s)
  return Plan(best, rates[best], standard, a, costs_s)


def choose_speculation(a: float, target_s: dict[int, float], draft_s: dict[int, float],
                       grid: tuple[int, ...] = GRID, margin: float = MARGIN,
                       rows: int = 1) -> Plan:
  """The gamma in `grid` (or standard decoding: one target call per token) with the most expected
  tokens/s for acceptance a and the measured call costs (seconds per batched call by positions:
  the target's at 1 and gamma + 1, the draft's at 1 and 2); tokens/s predicted over `rows`
  rows decoding together."""
  rates = {(g,): speculation_rate(a, g, target_s, draft_s) for g in grid}
  return _choose(rates, 1 / target_s[1], a, (target_s, draft_s), margin, rows)


def choose_cos(a: float, costs_s: tuple[dict[int, float], ...], grid: tuple[int, ...] = GRID,
               margin: float = MARGIN, rows: int = 1) -> Plan:
  """Per-model proposal lengths gamma_1 .. gamma_n from `grid` (or standard collaborative
  decoding: every model called once per token) with the most expected tokens/s for acceptance a
  and each model's measured call costs (at 1, 3 and gamma + 2 positions); tokens/s predicted
  over `rows` rows decoding together."""
  rates = {g: cos_rate(a, g, costs_s) for g in itertools.product(grid, repeat=len(costs_s))}
  return _choose(rates, 1 / sum(c[1] for c in costs_s), a, tuple(costs_s), margin, rows)


def cos_positions(grid: tuple[int, ...] = GRID) -> tuple[int, ...]:
  """The call widths a CoS plan over `grid` needs measured, for every model."""
  return tuple(sorted({1, 3} | {g + 2 for g in grid}))


def speculation_positions(grid: tuple[int, ...] = GRID) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """The call widths a speculation plan over `grid` needs measured: the target's, the draft's."""
  return tuple(sorted({1} | {g + 1 for g in grid})), (1, 2)
