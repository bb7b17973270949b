"""Ring-buffer KV caches of windowed entries (sliding attention; NSA's window branch and the raw
keys of the block being compressed): the same logits as the full-length cache and the uncached
forward pass over a context several times the window (rows of different prompt lengths, prompts
longer than the ring), greedy decoding token for token equal to the host loop's full-length
cache (plain, speculative, CoS, int8), exact rollback after rejected drafts, and windowed
entries whose size does not grow with max_len."""

import numpy as np
import pytest

from efficiency.attention import get_attention
from efficiency.attention.nsa import num_compressed_blocks
from efficiency.serving import export
from efficiency.serving.bench import decode_speed
from efficiency.serving.cache import cache_bytes, init_cache
from efficiency.serving.collaborate import collaborate
from efficiency.serving.generate import generate, kv_cache_bytes
from efficiency.serving.sampling import Sampling
from efficiency.serving.speculative import rollback, speculate
from efficiency.serving.targets import WeightedEnsemble
from tests.efficiency.serving.reference import Engine, Runner, host_generate
from tests.efficiency.serving.test_cache import full_logits, make_model
from tests.helpers import quant_config, trained_model

WINDOW = 4  # make_model's sliding and NSA windows (NSA: blocks of 4 every 2, selection 4 x 3)
ATOL_FORWARD = 1e-4  # float32 logits of size ~1 against the uncached pass (as test_cache)
ATOL_FULL = 1e-5  # against the full-length cache: the same keys, fewer masked slots
GREEDY = Sampling(temperature=0.0)
PROMPTS = [np.array(p, np.int32) for p in
           ([3, 1, 4, 1, 5, 9, 2, 6, 5], [2, 7], [1, 8, 2, 8, 1], [6])]

SLOW = pytest.mark.slow
# NSA's rings run by default in the rollback test (its compile here took 40 s on 2 cores).
CASES = [("sliding", "alibi"), pytest.param("nsa", "rope", marks=SLOW),
         pytest.param("sliding", "relative", marks=SLOW), pytest.param("nsa", "alibi", marks=SLOW)]


def windowed(model) -> list[str]:
  spec = get_attention(model.config.attention).kv_cache_spec(model.config)
  return [name for name, entry in spec.items() if entry.window is not None]


@pytest.mark.parametrize("attention,position", CASES)
def test_ring_matches_full_cache_and_forward(attention, position):
  """Rows of 9 and 3 prompt tokens (right-padded), then feeds of 6, 1, 5 and 7 tokens to 28
  positions (7 windows); the rings hold 4 slots, fewer than the prompt and than most feeds."""
  model, params = make_model(attention, position)
  tokens_BT = np.random.default_rng(0).integers(1, 97, size=(2, 28)).astype(np.int32)
  expected_BTV = full_logits(model, params, tokens_BT)
  ring = Runner(model, params, batch=2, max_len=32, rollback=0)
  full = Runner(model, params, batch=2, max_len=32)
  for name in windowed(model):
    assert ring.cache[name].shape[2] == WINDOW, name  # [layers, B, slots, K, H]
    assert full.cache[name].shape[2] == 32, name
  lengths_B = np.array([9, 3], np.int32)
  prompt_BT = tokens_BT[:, :9] * (np.arange(9) < lengths_B[:, None])
  got = ring.feed(prompt_BT, np.zeros(2, np.int32), lengths_B)
  want = full.feed(prompt_BT, np.zeros(2, np.int32), lengths_B)
  for b in range(2):
    n = lengths_B[b]
    np.testing.assert_allclose(got[b, :n], expected_BTV[b, :n], atol=ATOL_FORWARD)
    np.testing.assert_allclose(got[b, :n], want[b, :n], atol=ATOL_FULL)
  for step in (6, 1, 5, 7):
    new_BT = np.stack([tokens_BT[b, lengths_B[b] : lengths_B[b] + step] for b in range(2)])
    got, want = ring.feed(new_BT, lengths_B), full.feed(new_BT, lengths_B)
    for b in range(2):
      np.testing.assert_allclose(
          got[b], expected_BTV[b, lengths_B[b] : lengths_B[b] + step], atol=ATOL_FORWARD
      )
    np.testing.assert_allclose(got, want, atol=ATOL_FULL)
    lengths_B = lengths_B + step
  assert lengths_B[0] == 28


@pytest.mark.parametrize("attention", ["sliding", "nsa"])
def test_rollback_leaves_the_ring_of_the_kept_tokens(attention):
  """A 10-token prompt, a 4-token draft, rejection after 1 kept token (the pointer moves back to
  11), the correction: in every slot a later query can see, the ring equals one fed only the
  kept tokens, and so do the logits. A ring without the rollback slots gets them wrong."""
  model, params = make_model(attention, "rope")
  rng = np.random.default_rng(2)
  prompt = rng.integers(1, 97, size=(1, 10)).astype(np.int32)
  draft = rng.integers(1, 97, size=(1, 4)).astype(np.int32)
  correction = np.array([[5]], np.int32)
  kept = np.concatenate([prompt, draft[:, :1], correction], axis=1)
  gamma = draft.shape[1]

  def speculated(bound: int) -> tuple[Runner, np.ndarray]:
    runner = Runner(model, params, batch=1, max_len=32, rollback=bound)
    runner.feed(prompt, np.array([0]))
    runner.feed(draft, np.array([10]))
    return runner, runner.feed(correction, np.array([11]))

  runner, got = speculated(rollback(gamma))
  fresh = Runner(model, params, batch=1, max_len=32, rollback=rollback(gamma))
  expected = fresh.feed(kept, np.array([0]))[:, -1:]
  np.testing.assert_allclose(got, expected, atol=ATOL_FULL)
  spec = get_attention(attention).kv_cache_spec(model.config)
  for name, entry in spec.items():
    if entry.window is None:  # positions 0..11, or the compression blocks ending by 11
      visible = slice(0, 12 if entry.every == 1 else num_compressed_blocks(12, 4, 2))
    else:
      length = runner.cache[name].shape[2]
      assert length == entry.window + rollback(gamma) < kept.shape[1], name
      visible = np.arange(12 - entry.window + 1, 12) % length  # what a query at 12 reads
    # Keys and values projected in calls of other lengths round differently (a few float32 ulps
    # on AVX2-only machines), hence the relative tolerance.
    np.testing.assert_allclose(runner.cache[name][:, :, visible], fresh.cache[name][:, :, visible],
                               rtol=1e-5, atol=1e-6, err_msg=name)
  _, too_small = speculated(0)
  assert np.abs(too_small - expected).max() > 1e-3  # the test can fail


def target_model(attention: str):
  return make_model(attention, "alibi" if attention == "sliding" else "rope")


@pytest.mark.parametrize("attention", ["sliding", pytest.param("nsa", marks=SLOW)])
def test_greedy_generation_equals_host_loop(attention):
  """The jitted loop (rings of 4 slots) against the host loop (full-length cache), up to 29
  positions."""
  model, params = target_model(attention)
  expected = host_generate(model, params, PROMPTS, 20, GREEDY, eos_id=None)
  got = generate(model, params, PROMPTS, 20, GREEDY, eos_id=None)
  for g, w in zip(got, expected, strict=True):
    np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("attention", ["sliding", pytest.param("nsa", marks=SLOW)])
def test_speculative_greedy_equals_generation(attention):
  """Batched speculative decoding rolls both models' rings back after rejections; its greedy
  output equals the target's generation (itself checked against the host loop above)."""
  target = target_model(attention)
  draft = make_model(attention, "rope", num_layers=1, d_model=16)
  expected = generate(*target, PROMPTS, 20, GREEDY, eos_id=None)
  out = speculate(target, draft, PROMPTS, 20, GREEDY, 3, None)
  for g, w in zip(out.tokens, expected, strict=True):
    np.testing.assert_array_equal(g, w)
  assert 0 < out.accepted < out.verified  # drafts kept and rejected: the rings rolled back


@SLOW  # two models' CoS programs: about 20 s; the rollback test covers the rings' rollback
@pytest.mark.parametrize("attention", ["sliding", "nsa"])
def test_cos_greedy_equals_host_standard(attention):
  """CoS on device (rings sized for its rollback) equals the host engine's standard
  collaborative decoding on full-length caches, token for token."""
  members = [target_model(attention), make_model(attention, "rope", num_layers=1, d_model=16)]
  collab = WeightedEnsemble((0.5, 0.5), GREEDY)
  engine = Engine(collab, members, max_len=64)
  expected = [engine.decode(p, 12, np.random.default_rng(0), "standard")[0] for p in PROMPTS]
  out = collaborate(collab, members, PROMPTS, 12, "cos", None, gamma=2)
  for g, w in zip(out.tokens, expected, strict=True):
    np.testing.assert_array_equal(g, w)
  assert 0 < out.accepted < out.verified


@SLOW  # a served model's compile: about 12 s
@pytest.mark.parametrize("bits", [8, 4])
def test_served_sliding_model_generation_equals_host_loop(bits):
  config = quant_config(mode="int8" if bits == 8 else "none")
  config.model.update(attention="sliding", position="alibi")
  config.model.sliding.window = WINDOW
  served = export.convert(trained_model(config), bits, "float32")
  expected = host_generate(served.model, served.params, PROMPTS, 12, GREEDY, eos_id=None)
  got = generate(served.model, served.params, PROMPTS, 12, GREEDY, eos_id=None)
  for g, w in zip(got, expected, strict=True):
    np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("attention", ["sliding", "nsa"])
def test_windowed_entries_do_not_grow_with_max_len(attention):
  model, _ = make_model(attention, "rope")
  cfg = model.config
  spec = get_attention(attention).kv_cache_spec(cfg)
  short, long = (init_cache(cfg, 2, n, rollback=3) for n in (64, 256))
  for name, entry in spec.items():
    if entry.window is None:
      assert long[name].shape[2] == 4 * short[name].shape[2] == 256 // entry.every, name
    else:
      assert long[name].shape == short[name].shape, name
      assert long[name].shape[2] == entry.window + 3, name
  ring = [cache_bytes(cfg, 2, n, rollback=0) for n in (1024, 4096)]
  full = [cache_bytes(cfg, 2, n) for n in (1024, 4096)]
  if attention == "sliding":
    assert ring[0] == ring[1] == cfg.num_layers * 2 * 2 * WINDOW * cfg.num_kv_heads * 8 * 4
  else:
    assert ring[1] - ring[0] < (full[1] - full[0]) / 2  # selection keys and blocks still grow
  assert full[1] == 4 * full[0]
  assert kv_cache_bytes(model, 2, 9, 1008) == cache_bytes(cfg, 2, 16 + 1008, rollback=0)


def test_decode_timing_reports_the_ring_bytes():
  model, params = target_model("sliding")
  speed = decode_speed(model, params, np.ones((2, 4), np.int32), 60, repeats=1)
  assert speed["kv_cache_bytes"] == cache_bytes(model.config, 2, 64, rollback=0)
  assert speed["kv_cache_bytes"] * 16 == cache_bytes(model.config, 2, 64)  # 4 slots, not 64
