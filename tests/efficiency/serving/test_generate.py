"""On-device generation: the sampler against the float64 reference distribution (chi-square,
fixed seeds), greedy equal to the host decode loop token for token, sampled generation against
the enumerated distribution, per-row EOS, batched equal to unbatched, and one jitted loop with
one host transfer per request."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from efficiency.errors import ConfigError
from efficiency.serving import export
from efficiency.serving import generate as generate_lib
from efficiency.serving import sampling as device_sampling
from efficiency.serving.cache import init_cache
from efficiency.serving.forward import cached_forward
from efficiency.serving.generate import generate, run, stream
from efficiency.serving.request import check_context, pad_prompts
from efficiency.serving.sampling import Sampling
from efficiency.serving.targets import Single
from efficiency.serving.weights import to_decode_form
from tests.efficiency.serving.exactness import ALPHA, analytic, chi_square_p
from tests.efficiency.serving.reference import distribution, host_generate
from tests.efficiency.serving.test_cache import make_model
from tests.helpers import quant_config, tiny_model, trained_model

GREEDY = Sampling(temperature=0.0)
PROMPTS = [np.array([1, 3, 2], np.int32), np.array([4, 4, 7, 1, 9], np.int32),
           np.array([5], np.int32)]
SETTINGS = [Sampling(1.0), Sampling(0.7, top_k=3), Sampling(1.3, top_p=0.8),
            Sampling(0.9, top_k=5, top_p=0.7)]
DRAWS = 20000


@functools.cache
def draws(logits_V: tuple, sampling: Sampling) -> np.ndarray:
  """DRAWS tokens from the on-device sampler, one jitted call, fixed keys."""
  keys = jax.random.split(jax.random.key(0), DRAWS)
  logits_NV = jnp.broadcast_to(jnp.asarray(logits_V, jnp.float32), (DRAWS, len(logits_V)))
  return np.asarray(jax.jit(device_sampling.sample, static_argnums=2)(keys, logits_NV, sampling))


LOGITS_V = tuple(np.random.default_rng(0).normal(size=8).round(3) * 1.5)


@pytest.mark.parametrize("sampling", SETTINGS, ids=str)
def test_device_sampler_matches_reference(sampling):
  reference_V = distribution(np.asarray(LOGITS_V), sampling)
  got_V = np.asarray(device_sampling.probabilities(jnp.asarray(LOGITS_V)[None], sampling))[0]
  np.testing.assert_allclose(got_V, reference_V, atol=1e-6)
  observed = np.bincount(draws(LOGITS_V, sampling), minlength=8)
  assert not observed[reference_V == 0].any()
  support = reference_V > 0
  assert stats.chisquare(observed[support], reference_V[support] * DRAWS).pvalue > ALPHA
  # The test tells the settings from plain temperature-1 sampling.
  if sampling != Sampling(1.0):
    plain = distribution(np.asarray(LOGITS_V), Sampling(1.0))
    assert stats.chisquare(observed, plain * DRAWS).pvalue < 1e-9


def test_greedy_sampler_is_argmax():
  """Greedy takes numpy's argmax: the first of tied maxima, the first NaN, also over a
  one-hot row; compiled as plain reductions (no (value, index) reduce, which XLA's CPU backend
  runs as a scalar loop)."""
  logits_BV = np.random.default_rng(1).normal(size=(16, 9)).astype(np.float32)
  logits_BV[3, [2, 6]] = logits_BV[3].max() + 1  # a tie: the first wins
  logits_BV[5, [4, 7]] = np.nan
  logits_BV[6] = -np.inf
  keys = jax.random.split(jax.random.key(0), 16)
  got_B = device_sampling.sample(keys, logits_BV, GREEDY)
  assert got_B.dtype == jnp.int32
  np.testing.assert_array_equal(got_B, logits_BV.argmax(-1))
  assert got_B[3] == 2 and got_B[5] == 4 and got_B[6] == 0
  one_hot_BV = device_sampling.probabilities(jnp.asarray(logits_BV[:3]), GREEDY)
  np.testing.assert_array_equal(device_sampling.draw(keys[:3], one_hot_BV, one_hot=True),
                                logits_BV[:3].argmax(-1))
  hlo = jax.jit(device_sampling.argmax).lower(logits_BV).compile().as_text()
  assert not re.search(r"= \(f32\[16\]\S*, s32\[16\]\S*\) reduce\(", hlo), hlo


@pytest.mark.parametrize("attention", ["gqa", *(pytest.param(a, marks=pytest.mark.slow)
                                                 for a in ("mla", "sliding", "nsa", "mqa"))])
def test_greedy_equals_host_decode(attention):
  """Batch 3 (prompts of lengths 3, 5, 1) and batch 1, token for token, for each variant."""
  model, params = make_model(attention, "rope")
  expected = host_generate(model, params, PROMPTS, 12, GREEDY, eos_id=None)
  got = generate(model, params, PROMPTS, 12, GREEDY, eos_id=None)
  for g, e in zip(got, expected, strict=True):
    np.testing.assert_array_equal(g, e)
  np.testing.assert_array_equal(generate(model, params, PROMPTS[1:2], 12, GREEDY, None)[0],
                                expected[1])


@pytest.mark.slow
@pytest.mark.parametrize("bits", [8, 4])
def test_greedy_served_model_equals_host_decode(bits):
  config = quant_config(mode="int8" if bits == 8 else "none")
  served = export.convert(trained_model(config), bits, "float32")
  expected = host_generate(served.model, served.params, PROMPTS, 10, GREEDY, None)
  got = generate(served.model, served.params, PROMPTS, 10, GREEDY, None)
  for g, e in zip(got, expected, strict=True):
    np.testing.assert_array_equal(g, e)


@pytest.fixture(scope="module")
def model_11():
  return tiny_model(0, vocab=11, layers=2)


def test_eos_stops_each_row(model_11):
  full = generate(*model_11, PROMPTS, 12, GREEDY, eos_id=None)
  eos = next(int(t) for t in full[0] if any(t not in row for row in full))  # some rows lack it
  rows = generate(*model_11, PROMPTS, 12, GREEDY, eos_id=eos)
  for got, whole in zip(rows, full, strict=True):
    stop = np.flatnonzero(whole == eos)
    want = whole[: stop[0] + 1] if len(stop) else whole
    np.testing.assert_array_equal(got, want)
  assert any(len(r) < 12 for r in rows) and any(len(r) == 12 for r in rows)


def test_sampled_batched_equals_unbatched(model_11):
  """Row b draws from its own key (seed, first_row + b): the batch it decodes in does not
  change its tokens."""
  sampling = Sampling(1.0, top_k=6)
  batched = generate(*model_11, PROMPTS, 10, sampling, eos_id=None, seed=3)
  for i, prompt in enumerate(PROMPTS):
    alone = generate(*model_11, [prompt], 10, sampling, eos_id=None, seed=3, first_row=i)[0]
    np.testing.assert_array_equal(alone, batched[i])
  assert len({tuple(x) for x in batched}) > 1


VOCAB, K = 4, 2


def test_sampled_generation_matches_enumerated_distribution():
  """4 prompts of different lengths x 1000 rows in one batch: the first K tokens per prompt
  against the enumerated distribution; the same samples reject another model's."""
  model, other = tiny_model(0, layers=2), tiny_model(1)
  sampling = Sampling(temperature=0.8, top_p=0.9)
  prompts = [np.array(p, np.int32) for p in ([1, 3, 2], [2], [0, 1, 2, 3, 1], [3, 3])]
  rows = 1000
  out = generate(*model, [p for p in prompts for _ in range(rows)], K, sampling, None, seed=1)
  for i, prompt in enumerate(prompts):
    samples = [tuple(int(t) for t in x) for x in out[i * rows : (i + 1) * rows]]
    collab = Single(sampling)
    assert chi_square_p(samples, analytic(collab, [model], prompt, K, VOCAB), K, VOCAB) > ALPHA
    assert chi_square_p(samples, analytic(collab, [other], prompt, K, VOCAB), K, VOCAB) < 1e-6


def test_one_jitted_loop_and_one_transfer(model_11, monkeypatch):
  """The whole request is one compiled program with a while loop; no implicit transfer, and the
  host reads the device once."""
  model, params = model_11
  tokens_BP, lengths_B = pad_prompts(PROMPTS)
  jitted = generate_lib.program(model, GREEDY, 12, tokens_BP.shape[1] + 12)
  hlo = jitted.lower(params, tokens_BP, lengths_B, np.int32(-2), np.int32(0),
                     np.arange(3, dtype=np.int32))
  assert "stablehlo.while" in hlo.as_text()
  run(model, params, PROMPTS, 12, GREEDY, None)  # compiles outside the guard
  reads = []
  device_get = jax.device_get
  monkeypatch.setattr(jax, "device_get", lambda x: reads.append(1) or device_get(x))
  with jax.transfer_guard("disallow"):
    result = run(model, params, PROMPTS, 12, GREEDY, None)
  assert len(reads) == 1 and result.compile_s == 0
  assert [len(t) for t in result.tokens] == [12, 12, 12]


def _primitives(jaxpr) -> set[str]:
  """The primitives of a jaxpr and of every jaxpr nested in it."""
  names = {e.primitive.name for e in jaxpr.eqns}
  for eqn in jaxpr.eqns:
    for sub in jax.core.jaxprs_in_params(eqn.params):
      names |= _primitives(sub)
  return names


def test_scanned_layers_decode_layer_by_layer(model_11):
  """A model trained with `scan_layers` decodes with its layers unrolled: the decode loop holds
  no layer scan (which sliced every kernel out of the stacked params in each step), and each
  layer's kernels and cache enter the loop as their own arrays, none stacked over layers.
  (Its tokens equal the scanned model's host loop: test_greedy_equals_host_decode.)"""
  stored, stored_params = model_11
  assert stored.config.scan_layers
  assert stored_params["layers"]["mlp"]["down"]["kernel"].shape[0] == 2
  model, params = to_decode_form(stored, stored_params)  # split once, at load
  assert not model.config.scan_layers and "layers" not in params
  tokens_BP, lengths_B = pad_prompts(PROMPTS)
  jitted = generate_lib.program(model, GREEDY, 6, tokens_BP.shape[1] + 6)
  closed = jax.make_jaxpr(jitted)(params, tokens_BP, lengths_B, np.int32(-2), np.int32(0),
                                  np.arange(3, dtype=np.int32))
  calls = [e for e in closed.jaxpr.eqns if "jaxpr" in e.params]  # the jit call, if kept
  program = calls[0].params["jaxpr"].jaxpr if calls else closed.jaxpr
  (loop,) = [e for e in program.eqns if e.primitive.name == "while"]
  body = loop.params["body_jaxpr"].jaxpr
  assert "scan" not in _primitives(body)
  assert generate_lib.program(model, GREEDY, 6, tokens_BP.shape[1] + 6) is jitted  # model intact
  kernel_shape = stored_params["layers"]["mlp"]["down"]["kernel"].shape[1:]
  inputs = [v.aval.shape for v in body.invars]
  assert inputs.count(kernel_shape) == 2  # each layer's down kernel
  assert not any(s[:1] == (2,) and s[1:] == kernel_shape for s in inputs)


def test_decode_steps_read_kernels_and_caches_as_stored():
  """No decode step copies a kernel or the KV cache into another layout: the attention output
  kernel [N, H, D] contracts over N and H as one axis (layers.merged_contraction_einsum), and the
  heads-major cache, keys [B, K, H, S] and values [B, K, S, H], is what the score and value
  products read (a [B, S, K, H] cache was copied into [B, K, S, H] and [B, K, H, S] in every
  step)."""
  model, params = make_model("gqa", "rope")
  n, h, d = params["layers"]["attn"]["out"]["kernel"].shape[1:]
  model, params = to_decode_form(model, params)
  k = model.config.num_kv_heads
  assert n != h and k > 1
  prompts = PROMPTS[:2]
  tokens_BP, lengths_B = pad_prompts(prompts)
  s = tokens_BP.shape[1] + 6
  jitted = generate_lib.program(model, GREEDY, 6, s)
  hlo = jitted.lower(params, tokens_BP, lengths_B, np.int32(-2), np.int32(0),
                     np.arange(2, dtype=np.int32)).compile().as_text()
  made = set(re.findall(r"= f32\[([0-9,]*)\]", hlo))  # every float shape an instruction makes
  assert f"2,{n},{h},{d}" not in made  # layers split at load, not in the request
  assert f"{h},{n},{d}" not in made
  assert f"2,{k},{s},{h}" in made and f"2,{k},{h},{s}" in made  # values, keys
  assert f"2,{s},{k},{h}" not in made
  steps = hlo[: hlo.index("\nENTRY")]  # every computation but the request's entry, which
  assert "while" in hlo  # copies the zeroed cache in once
  for shape in (f"2,{k},{s},{h}", f"2,{k},{h},{s}"):
    assert not re.search(rf"= f32\[{shape}\]\S* (transpose|copy)\(", steps), shape


def test_prefill_computes_logits_at_the_last_prompt_tokens_only():
  """The request's prefill projects onto the vocabulary only each row's last prompt token:
  no [B, P, V] logits are made, and the first tokens equal the host loop's (the greedy tests
  above); `logits_at_BK` equals the full logits at those positions."""
  model, params = make_model("gqa", "rope")
  tokens_BP, lengths_B = pad_prompts(PROMPTS[:2])
  b, p = tokens_BP.shape
  v = model.config.vocab_size
  s = p + 6
  hlo = generate_lib.program(model, GREEDY, 6, s).lower(
      params, tokens_BP, lengths_B, np.int32(-2), np.int32(0), np.arange(b, dtype=np.int32)
  ).compile().as_text()
  assert f"f32[{b},{v}]" in hlo and f"f32[{b},{p},{v}]" not in hlo
  forward = lambda at: cached_forward(model, params, jnp.asarray(tokens_BP),
                                      init_cache(model.config, b, s), jnp.zeros(b, jnp.int32),
                                      jnp.asarray(lengths_B), at)[0]
  at_BK = np.stack([lengths_B - 1, np.zeros(b, np.int32)], axis=1)
  np.testing.assert_allclose(forward(jnp.asarray(at_BK)),
                             np.take_along_axis(np.asarray(forward(None)), at_BK[:, :, None], 1),
                             atol=1e-5)


@pytest.mark.parametrize("chunk, sampling, stop", [(3, Sampling(1.0, top_k=6), True),
                                                    (5, GREEDY, False), (12, GREEDY, True)])
def test_streamed_chunks_are_the_request_tokens(model_11, chunk, sampling, stop, monkeypatch):
  """Streaming hands over each row's tokens every `chunk` steps, one transfer per chunk; joined,
  they are `run`'s tokens (same keys), rows stopping at EOS."""
  eos = None
  if stop:
    full = generate(*model_11, PROMPTS, 12, sampling, None, seed=2)
    eos = next(int(t) for t in full[0] if any(t not in row for row in full))
  want = generate(*model_11, PROMPTS, 12, sampling, eos, seed=2)
  list(stream(*model_11, PROMPTS, 12, sampling, eos, chunk, seed=2))  # compiles
  reads = []
  device_get = jax.device_get
  monkeypatch.setattr(jax, "device_get", lambda x: reads.append(1) or device_get(x))
  with jax.transfer_guard_device_to_host("disallow"):
    chunks = list(stream(*model_11, PROMPTS, 12, sampling, eos, chunk, seed=2))
  assert len(reads) == len(chunks) <= -(-12 // chunk)
  assert all(len(piece) <= chunk for pieces in chunks for piece in pieces)
  for b, expected in enumerate(want):
    np.testing.assert_array_equal(np.concatenate([pieces[b] for pieces in chunks]), expected)
  if stop:
    assert any(len(w) < 12 for w in want) and any(len(w) == 12 for w in want)


def test_clear_errors(model_11):
  with pytest.raises(ConfigError, match="stream chunk=0 must be >= 1"):
    next(stream(*model_11, PROMPTS, 4, GREEDY, None, chunk=0))
  with pytest.raises(ConfigError, match="max_new_tokens=0"):
    generate(*model_11, PROMPTS, 0, GREEDY, None)
  with pytest.raises(ConfigError, match="at least one token"):
    generate(*model_11, [np.array([], np.int32)], 4, GREEDY, None)
  with pytest.raises(ConfigError, match="max_new_tokens=200 exceeds the model's context of 128"):
    check_context(200, 128)
