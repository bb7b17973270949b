"""Cached decoding equals the uncached forward pass, for every attention variant and position
encoding; rollback by pointer equals a cache built from the kept tokens alone."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from efficiency.attention import get_attention
from efficiency.model.transformer import Transformer
from tests.efficiency.serving.reference import Runner
from tests.helpers import tiny_model_config

ATOL = 1e-4  # float32 logits of size ~1; cached and full passes reduce in different orders

SLOW = pytest.mark.slow
CASES = [
    ("gqa", "rope"), ("mla", "rope"), ("sliding", "alibi"), ("nsa", "rope"),
    pytest.param("gqa", "relative", marks=SLOW),
    pytest.param("mha", "sinusoidal", marks=SLOW), pytest.param("mqa", "learned", marks=SLOW),
    pytest.param("gqa", "none", marks=SLOW), pytest.param("gqa", "alibi", marks=SLOW),
    pytest.param("mla", "alibi", marks=SLOW), pytest.param("sliding", "relative", marks=SLOW),
    pytest.param("nsa", "alibi", marks=SLOW),
]


def make_model(attention: str, position: str, **overrides):
  cfg = tiny_model_config(attention=attention, position=position, sliding={"window": 4},
                          **overrides)
  cfg.nsa.update(block_size=4, stride=2, select_size=4, top_n=3, window=4)
  model = Transformer(ml_collections.FrozenConfigDict(cfg))
  tokens = jnp.ones((1, 8), jnp.int32)
  params = nn.unbox(model.init(jax.random.key(0), tokens, tokens, tokens)["params"])
  return model, params


def full_logits(model, params, tokens_BT: np.ndarray) -> np.ndarray:
  b, t = tokens_BT.shape
  positions = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t))
  return np.asarray(model.apply({"params": params}, tokens_BT, np.ones_like(tokens_BT), positions))


@pytest.mark.parametrize("attention,position", CASES)
def test_prefill_and_steps_match_full_forward(attention, position):
  model, params = make_model(attention, position)
  rng = np.random.default_rng(0)
  tokens_BT = rng.integers(1, 97, size=(2, 20)).astype(np.int32)
  expected_BTV = full_logits(model, params, tokens_BT)
  # Rows prefill prompts of different lengths (right-padded), then decode 1, 3, 1, ... tokens.
  lengths = np.array([7, 4], np.int32)
  runner = Runner(model, params, batch=2, max_len=64)
  prompt_BT = tokens_BT[:, :7].copy()
  prompt_BT[1, 4:] = 0
  got_BTV = runner.feed(prompt_BT, np.zeros(2, np.int32))
  for b in range(2):
    np.testing.assert_allclose(got_BTV[b, : lengths[b]], expected_BTV[b, : lengths[b]], atol=ATOL)
  for step in (1, 3, 1, 3, 1):
    new_BT = np.stack([tokens_BT[b, lengths[b] : lengths[b] + step] for b in range(2)])
    got_BTV = runner.feed(new_BT, lengths)
    for b in range(2):
      np.testing.assert_allclose(
          got_BTV[b], expected_BTV[b, lengths[b] : lengths[b] + step], atol=ATOL
      )
    lengths = lengths + step


@pytest.mark.slow
def test_unscanned_layers_decode():
  model, params = make_model("gqa", "rope", scan_layers=False)
  tokens_BT = np.random.default_rng(1).integers(1, 97, size=(1, 9)).astype(np.int32)
  expected_BTV = full_logits(model, params, tokens_BT)
  runner = Runner(model, params, batch=1, max_len=40)
  got = [runner.feed(tokens_BT[:, :5], np.array([0]))]
  got += [runner.feed(tokens_BT[:, i : i + 1], np.array([i])) for i in range(5, 9)]
  np.testing.assert_allclose(np.concatenate(got, axis=1), expected_BTV, atol=ATOL)


def test_unrolled_layer_scan_decodes_like_the_looped_forward():
  """`scan_unroll` over every layer (no loop) decodes a prompt and 4 tokens through the cache to
  the logits of the looped model's full forward on the same parameters."""
  looped, params = make_model("gqa", "rope")
  unrolled, _ = make_model("gqa", "rope", scan_unroll=2)
  tokens_BT = np.random.default_rng(3).integers(1, 97, size=(2, 9)).astype(np.int32)
  expected_BTV = full_logits(looped, params, tokens_BT)
  runner = Runner(unrolled, params, batch=2, max_len=16)
  got = [runner.feed(tokens_BT[:, :5], np.array([0, 0]))]
  got += [runner.feed(tokens_BT[:, i : i + 1], np.array([i, i])) for i in range(5, 9)]
  np.testing.assert_allclose(np.concatenate(got, axis=1), expected_BTV, atol=ATOL)


@pytest.mark.parametrize("attention", ["gqa", "mla"])
def test_rollback_equals_cache_of_kept_tokens(attention):
  """Feed a prompt and a 4-token draft, reject after 1 accepted token by moving the pointer back,
  feed the correction: the live slots equal those of a cache fed only the kept tokens."""
  model, params = make_model(attention, "rope")
  rng = np.random.default_rng(2)
  prompt = rng.integers(1, 97, size=(1, 6)).astype(np.int32)
  draft = rng.integers(1, 97, size=(1, 4)).astype(np.int32)
  correction = np.array([[5]], np.int32)
  runner = Runner(model, params, batch=1, max_len=32)
  runner.feed(prompt, np.array([0]))
  runner.feed(draft, np.array([6]))
  got = runner.feed(correction, np.array([7]))  # pointer back to 7: prompt + draft[0] kept
  fresh = Runner(model, params, batch=1, max_len=32)
  kept = np.concatenate([prompt, draft[:, :1], correction], axis=1)
  expected = fresh.feed(kept, np.array([0]))[:, -1:]
  np.testing.assert_allclose(got, expected, atol=ATOL)
  for name, entry in get_attention(attention).kv_cache_spec(model.config).items():
    live = lambda cache, entry=entry: np.take(np.asarray(cache), range(8), 1 + entry.slot_axis)
    np.testing.assert_allclose(  # slots 0..7 of every layer and row
        live(runner.cache[name]), live(fresh.cache[name]), atol=1e-5, err_msg=name
    )
