"""Speculative decoding toward any target distribution r, and the schedules built on it.

Acceptance (Leviathan et al. 2023): a token x drafted from q is kept with probability
min(1, r(x) / q(x)); at the first rejection the token is resampled from
normalize(max(0, r - q)) and every later draft is dropped. Keeping with min(q, r) plus the
residual gives exactly r for any q, so every schedule below samples exactly from r.

The engine decodes one sequence (batch 1). Each model is a `Participant` holding its own cache
and the logits it has computed at each position; a call feeds every token of the sequence it has
not seen yet (committed, drafted or carried) in one cached forward pass. A token is verified once
every model in r has scored it; a rejection moves every cache pointer back (rollback = pointer).

Schedules (`Engine.decode(method=...)`):
- `standard`: every model scores the last token, then one token is sampled from r.
- `naive`: a fixed proposer drafts `gamma` tokens, the other models score them in one call each,
  then verification; when all are kept, one more token is sampled from r (the proposer first
  scores its last draft if it is one of r's models). With a draft model outside r and a single
  target this is plain speculative decoding.
- `alternate` (CoS): models take turns. The proposer drafts `gamma` tokens; the others, in
  cyclic order, score everything pending in one call each. When all are kept, the last model's
  next-token sample is drawn from its own distribution (r is not known there), so it is not
  emitted: it becomes a carried proposal and that model the next proposer. Any rejection
  clears every pending proposal; the model that found it proposes next.
"""

import dataclasses
import time

import flax.linen as nn
import numpy as np

from efficiency.errors import ConfigError
from efficiency.serving.runner import Runner
from efficiency.serving.sampling import Sampling, distribution, sample

METHODS = ("standard", "naive", "alternate")


def check_gamma(gamma: int) -> None:
  """Drafts per proposer turn: at least one."""
  if gamma < 1:
    raise ConfigError(f"gamma={gamma} must be >= 1")


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
      q_V = self.collaboration.proposal(self.members.index(p), logits_V)
    self.proposals[len(self.seq)] = q_V
    self.seq.append(sample(q_V, self.rng))

  def _verify(self) -> bool:
    """Verifies pending tokens scored by every member, in order. False on a rejection."""
    while self.committed < len(self.seq):
      j = self.committed
      if not all(j in m.logits for m in self.members):
        return True
      r_V = self.collaboration.target([m.logits[j] for m in self.members])
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
      r_V = self.collaboration.target([m.logits[n] for m in self.members])
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
    `naive` (ignored when a draft model is given) and starts `alternate`."""
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
    {"standard": self._standard, "naive": self._naive, "alternate": self._alternate}[method](
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

  def _alternate(self, gamma: int, proposer: int) -> None:
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
