"""The float64 numpy references the on-device decoders are tested against, and the host engine
they replaced (batch 1, one cached forward call per model turn, logits copied to numpy).

- sampling: temperature, top-k and top-p as explicit float64 distributions (`distribution`,
  `sample`); targets: r and each model's proposal q of a `Single`, `WeightedEnsemble` or
  `Contrastive` (`target`, `proposal`).
- acceptance: a token x drafted from q is kept with probability min(1, r(x) / q(x)); at the
  first rejection it is resampled from normalize(max(0, r - q)) (`residual`,
  `accept_or_resample`).
- `Runner`: one model's jitted cached forward pass on a cache it holds, fed from the host.
- `host_generate`: plain generation, one cached step per token, sampled row by row.
- `Engine`: speculative decoding toward any target r, one sequence. Each model is a
  `Participant` holding its own cache and the logits it has computed at each position; a call
  feeds every token it has not seen (committed, drafted or carried) in one cached forward pass.
  A token is verified once every model in r has scored it; a rejection moves every cache
  pointer back. Schedules (`Engine.decode(method=...)`):
  - `standard`: every model scores the last token, then one token is sampled from r.
  - `naive`: a fixed proposer (or a draft model outside r) drafts `gamma` tokens, the others
    score them in one call each, then verification; with a draft model and a single target this
    is plain speculative decoding.
  - `cos`: models take turns. The proposer drafts `gamma` tokens; the others, in cyclic order,
    score everything pending in one call each. When all are kept, the last model's next-token
    sample is drawn from its own distribution and carried as its proposal, that model the next
    proposer. Any rejection clears every pending proposal; the model that found it proposes
    next.
"""

import dataclasses
import functools
import time
from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np

from efficiency.errors import ConfigError
from efficiency.serving.cache import init_cache
from efficiency.serving.forward import bucket, cached_forward
from efficiency.serving.request import check_gamma
from efficiency.serving.sampling import Sampling
from efficiency.serving.targets import Contrastive, WeightedEnsemble

METHODS = ("standard", "naive", "cos")


def softmax(x_V: np.ndarray) -> np.ndarray:
  """Softmax over the last axis in float64."""
  x = np.asarray(x_V, np.float64)
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def one_hot_argmax(x_V: np.ndarray) -> np.ndarray:
  out = np.zeros(x_V.shape, np.float64)
  np.put_along_axis(out, np.argmax(x_V, axis=-1)[..., None], 1.0, axis=-1)
  return out


def truncate(probs_V: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
  """Keeps the top_k most likely tokens, then the smallest most-likely set whose mass reaches
  top_p, and renormalizes (ties at the cut broken by token id)."""
  probs = np.asarray(probs_V, np.float64)
  order = np.argsort(-probs, axis=-1, kind="stable")
  sorted_p = np.take_along_axis(probs, order, axis=-1)
  keep = np.ones_like(sorted_p, bool)
  if top_k:
    keep[..., top_k:] = False
  if top_p < 1:
    before = np.cumsum(sorted_p, axis=-1) - sorted_p  # mass of the more likely tokens
    keep &= before < top_p
  kept = np.zeros_like(probs)
  np.put_along_axis(kept, order, np.where(keep, sorted_p, 0.0), axis=-1)
  return kept / kept.sum(axis=-1, keepdims=True)


def distribution(logits_V: np.ndarray, sampling: Sampling) -> np.ndarray:
  """The next-token distribution the settings sample from (one-hot argmax when greedy)."""
  if sampling.temperature == 0:
    return one_hot_argmax(np.asarray(logits_V, np.float64))
  probs = softmax(np.asarray(logits_V, np.float64) / sampling.temperature)
  if sampling.top_k or sampling.top_p < 1:
    probs = truncate(probs, sampling.top_k, sampling.top_p)
  return probs


def sample(probs_V: np.ndarray, rng: np.random.Generator) -> int:
  """One token from a distribution (inverse CDF on one uniform draw)."""
  cdf = np.cumsum(probs_V)
  return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(cdf) - 1))


def _log(probs: np.ndarray) -> np.ndarray:
  with np.errstate(divide="ignore"):
    return np.log(probs)


def _member(collab: WeightedEnsemble, k: int, logits_V: np.ndarray) -> np.ndarray:
  tau = collab.temperatures[k] if collab.temperatures else 1.0
  return softmax(np.asarray(logits_V, np.float64) / tau)


def target(collab, logits: Sequence[np.ndarray]) -> np.ndarray:
  """r [V] (float64) from each model's logits (in the collaboration's order)."""
  if isinstance(collab, WeightedEnsemble):
    pairs = enumerate(zip(collab.weights, logits, strict=True))
    mixture = sum(w * _member(collab, k, logits_V) for k, (w, logits_V) in pairs)
    return distribution(_log(mixture), collab.sampling)
  if isinstance(collab, Contrastive):
    expert, amateur = (np.asarray(x, np.float64) for x in logits)
    return distribution(expert - collab.mu * amateur, collab.sampling)
  return distribution(logits[0], collab.sampling)


def proposal(collab, k: int, logits_V: np.ndarray) -> np.ndarray:
  """What model k drafts from when it proposes (float64)."""
  if isinstance(collab, WeightedEnsemble):
    return distribution(_log(_member(collab, k, logits_V)), collab.sampling)
  return distribution(logits_V, collab.sampling)


@functools.cache
def compiled_forward(model: nn.Module):
  """The jitted cached forward pass of `model` (one per model, shared by its runners; the cache
  argument is donated)."""
  return jax.jit(functools.partial(cached_forward, model), donate_argnums=2)


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


def host_generate(
    model: nn.Module,
    params: dict,
    prompts: list[np.ndarray],
    max_new_tokens: int,
    sampling: Sampling,
    eos_id: int | None,
    seed: int = 0,
) -> list[np.ndarray]:
  """New tokens for each prompt (up to and including EOS, at most max_new_tokens)."""
  rng = np.random.default_rng(seed)
  lengths_B = np.array([len(p) for p in prompts], np.int32)
  b, t = len(prompts), int(lengths_B.max())
  runner = Runner(model, params, b, t + max_new_tokens + 32)
  tokens_BT = np.zeros((b, t), np.int32)
  for i, p in enumerate(prompts):
    tokens_BT[i, : len(p)] = p
  logits_BV = runner.feed(tokens_BT, np.zeros(b, np.int32))[np.arange(b), lengths_B - 1]
  out = [[] for _ in range(b)]
  done = np.zeros(b, bool)
  for step in range(max_new_tokens):
    next_B = np.array([sample(distribution(logits_BV[i], sampling), rng) for i in range(b)])
    for i in np.flatnonzero(~done):
      out[i].append(int(next_B[i]))
      done[i] |= next_B[i] == eos_id
    if done.all() or step == max_new_tokens - 1:
      break
    logits_BV = runner.feed(next_B[:, None].astype(np.int32), lengths_B)[:, 0]
    lengths_B = lengths_B + 1
  return [np.array(o, np.int32) for o in out]


def residual(r_V: np.ndarray, q_V: np.ndarray) -> np.ndarray:
  """normalize(max(0, r - q)); r itself when r <= q everywhere (then rejection never happens)."""
  d_V = np.maximum(r_V - q_V, 0.0)
  total = d_V.sum()
  return d_V / total if total > 0 else r_V


def accept_or_resample(
    r_V: np.ndarray, q_V: np.ndarray, token: int, rng: np.random.Generator
) -> tuple[bool, int]:
  """Keeps `token` (drafted from q) with probability min(1, r / q), else samples the residual."""
  if rng.random() * q_V[token] < r_V[token]:
    return True, token
  return False, sample(residual(r_V, q_V), rng)


def common_prefix(a: list[int], b: list[int]) -> int:
  """Length of the longest common prefix."""
  n = min(len(a), len(b))
  diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
  return int(diff[0]) if len(diff) else n


class Participant:
  """One model in a decoding session: its runner (batch 1), how many tokens of the sequence its
  cache holds (`fed`), and its logits for each position it has scored."""

  def __init__(self, model: nn.Module, params: dict, max_len: int):
    self.runner = Runner(model, params, batch=1, max_len=max_len)
    self.vocab_size = model.config.vocab_size
    self.fed, self.logits, self.calls = 0, {}, 0

  def catch_up(self, seq: list[int]) -> None:
    """Feeds every token it has not seen in one call: logits for positions fed+1..len(seq)."""
    if self.fed >= len(seq):
      return
    new = np.asarray(seq[self.fed :], np.int32)[None]
    logits_TV = self.runner.feed(new, np.array([self.fed], np.int32))[0]
    for i, logits_V in enumerate(logits_TV):
      self.logits[self.fed + i + 1] = logits_V
    self.fed, self.calls = len(seq), self.calls + 1

  def rollback(self, position: int) -> None:
    """Forgets tokens from `position` on: the pointer moves back, later logits are dropped."""
    self.fed = min(self.fed, position)
    self.logits = {j: v for j, v in self.logits.items() if j <= position}


@dataclasses.dataclass
class Stats:
  """What one decode did: new tokens, model calls after the prefill (per participant),
  drafted tokens that were verified and how many were kept, and the time."""

  tokens: int = 0
  calls: list[int] = dataclasses.field(default_factory=list)
  verified: int = 0
  accepted: int = 0
  prefill_s: float = 0.0
  decode_s: float = 0.0

  @property
  def acceptance(self) -> float | None:
    return self.accepted / self.verified if self.verified else None

  @property
  def tokens_per_call(self) -> float:
    return self.tokens / max(sum(self.calls), 1)


class Engine:
  """Decodes from `collaboration.target` with the models in `members` (in the collaboration's
  order), plus an optional `draft` model outside r that proposes under `draft_sampling`."""

  def __init__(
      self,
      collaboration,
      members: list[tuple[nn.Module, dict]],
      max_len: int,
      draft: tuple[nn.Module, dict] | None = None,
      draft_sampling: Sampling | None = None,
  ):
    if len(members) != collaboration.num_models:
      raise ConfigError(f"{len(members)} models given; the target needs {collaboration.num_models}")
    self.collaboration = collaboration
    self.members = [Participant(m, p, max_len) for m, p in members]
    self.draft = None if draft is None else Participant(*draft, max_len)
    self.draft_sampling = draft_sampling
    self.seq: list[int] = []
    vocabs = [p.vocab_size for p in self.participants]
    if len(set(vocabs)) > 1:
      raise ConfigError(
          f"models have different vocabularies (vocab_size {vocabs}); collaborative and "
          "speculative decoding need one shared tokenizer"
      )

  @property
  def participants(self) -> list[Participant]:
    return self.members + ([self.draft] if self.draft else [])

  def warmup(self, prompt_len: int, gamma: int) -> None:
    """Compiles every feed length a decode with these sizes can use (prefill and drafts)."""
    for p in self.participants:
      p.runner.warmup(max(prompt_len, gamma + 2))
      p.fed, p.logits = 0, {}
    self.seq = []

  def _propose(self, p: Participant) -> None:
    """p drafts one token at the end of the sequence from its own distribution."""
    p.catch_up(self.seq)
    logits_V = p.logits[len(self.seq)]
    if p is self.draft:
      q_V = distribution(logits_V, self.draft_sampling)
    else:
      q_V = proposal(self.collaboration, self.members.index(p), logits_V)
    self.proposals[len(self.seq)] = q_V
    self.seq.append(sample(q_V, self.rng))

  def _verify(self) -> bool:
    """Verifies pending tokens scored by every member, in order. False on a rejection."""
    while self.committed < len(self.seq):
      j = self.committed
      if not all(j in m.logits for m in self.members):
        return True
      r_V = target(self.collaboration, [m.logits[j] for m in self.members])
      kept, token = accept_or_resample(r_V, self.proposals.pop(j), self.seq[j], self.rng)
      self.stats.verified += 1
      self.committed += 1
      if not kept:
        self.seq[j:] = [token]
        self.proposals.clear()
        for p in self.participants:
          p.rollback(j)
        return False
      self.stats.accepted += 1
    return True

  def _sample_from_target(self) -> None:
    """Samples the next token from r when every member has scored the whole sequence."""
    n = len(self.seq)
    if self.committed == n and all(n in m.logits for m in self.members):
      r_V = target(self.collaboration, [m.logits[n] for m in self.members])
      self.seq.append(sample(r_V, self.rng))
      self.committed += 1

  def _done(self) -> bool:
    new = self.seq[self.prompt_len : self.committed]
    return len(new) >= self.max_new_tokens or (self.eos_id is not None and self.eos_id in new)

  def _draft_turn(self, proposer: Participant, gamma: int) -> bool:
    """gamma proposals, verifying whatever becomes verifiable; False on a rejection."""
    for _ in range(gamma):
      self._propose(proposer)
      if not self._verify():
        return False
    return True

  def decode(
      self,
      prompt: np.ndarray,
      max_new_tokens: int,
      rng: np.random.Generator,
      method: str = "standard",
      gamma: int = 5,
      eos_id: int | None = None,
      proposer: int = 0,
  ) -> tuple[np.ndarray, Stats]:
    """New tokens (up to EOS or max_new_tokens) and stats. `proposer` indexes `members` for
    `naive` (ignored when a draft model is given) and starts `cos`."""
    if method not in METHODS:
      raise ConfigError(f"method={method!r} is unknown; valid choices: {list(METHODS)}")
    check_gamma(gamma)
    if len(prompt) == 0:
      raise ConfigError("the prompt needs at least one token")
    self.rng, self.max_new_tokens, self.eos_id = rng, max_new_tokens, eos_id
    previous, self.seq = self.seq, [int(t) for t in prompt]
    self.prompt_len = self.committed = len(prompt)
    self.proposals: dict[int, np.ndarray] = {}
    self.stats = Stats()
    start = time.perf_counter()
    for p in self.participants:
      p.rollback(common_prefix(previous[: p.fed], self.seq))  # reuses a cached prompt prefix
      p.catch_up(self.seq)
      p.calls = 0
    decode_start = time.perf_counter()
    self.stats.prefill_s = decode_start - start
    {"standard": self._standard, "naive": self._naive, "cos": self._cos}[method](
        gamma, proposer
    )
    self.stats.decode_s = time.perf_counter() - decode_start
    new = self.seq[self.prompt_len : self.committed][:max_new_tokens]
    if eos_id is not None and eos_id in new:
      new = new[: new.index(eos_id) + 1]
    self.stats.tokens = len(new)
    self.stats.calls = [p.calls for p in self.participants]
    return np.asarray(new, np.int32), self.stats

  def _standard(self, gamma: int, proposer: int) -> None:
    del gamma, proposer
    while not self._done():
      for m in self.members:
        m.catch_up(self.seq)
      self._sample_from_target()

  def _naive(self, gamma: int, proposer: int) -> None:
    drafter = self.draft or self.members[proposer]
    while not self._done():
      if not self._draft_turn(drafter, gamma):
        continue
      for m in self.members:
        if m is not drafter:
          m.catch_up(self.seq)
      if self._verify():
        if drafter is not self.draft:
          drafter.catch_up(self.seq)  # r needs its logits after its last draft
        self._sample_from_target()

  def _cos(self, gamma: int, proposer: int) -> None:
    n = len(self.members)
    current = proposer
    while not self._done():
      if not self._draft_turn(self.members[current], gamma):
        continue  # the proposer found the rejection (a carried token); it proposes again
      for step in range(1, n):
        verifier = (current + step) % n
        self.members[verifier].catch_up(self.seq)
        if not self._verify():
          current = verifier
          break
      else:
        current = (current + n - 1) % n  # the last verifier carries its own proposal
        if self.committed == len(self.seq) and not self._done():
          self._propose(self.members[current])
