"""MLA, NSA and sliding-window attention against plain references; causality and documents.

References are numpy in float64 with full T x T score matrices and explicit masks; the modules
compute in float32, so outputs must agree to 1e-4 (absolute, on O(1) values).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from efficiency.attention import get_attention, kv_cache_bytes_per_token
from efficiency.attention.mla import MultiHeadLatentAttention
from efficiency.attention.nsa import NativeSparseAttention
from efficiency.attention.windowed import windowed_attention
from efficiency.model.flops import matmul_params
from efficiency.model.transformer import Transformer
from efficiency.position import get_position
from efficiency.position.alibi import AlibiBias
from efficiency.position.rope import apply_rope
from tests import helpers
from tests.helpers import random_packed_batch, tiny_model_config

ATOL = 1e-4
MLA = dict(kv_latent_dim=8, q_latent_dim=12, rope_dim=4, qk_head_dim=6, v_head_dim=10)
NSA = dict(block_size=4, stride=2, select_size=4, top_n=2, window=5)


def variant_config(**overrides) -> ml_collections.FrozenConfigDict:
  cfg = tiny_model_config(sliding={"window": 5}, **overrides)
  cfg.mla.update(MLA)
  cfg.nsa.update(NSA)
  return ml_collections.FrozenConfigDict(cfg)


def init_perturbed(module, rng, b=2, t=24):
  """Params with every entry perturbed (so zero-initialized biases matter) and a packed batch."""
  x = jnp.asarray(rng.standard_normal((b, t, module.config.d_model)), jnp.float32)
  _, segment_ids, positions = random_packed_batch(rng, b, t, vocab=10)
  params = nn.meta.unbox(jax.jit(module.init)(jax.random.PRNGKey(0), x, segment_ids, positions))
  params = jax.tree.map(
      lambda p: p + 0.2 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params["params"]
  )
  return params, x, segment_ids, positions


def bias_of(cfg, params, positions):
  """[B, N, T, T] score bias of the config's position encoding (None without one)."""
  module = get_position(cfg.position)(cfg).score_bias()
  if module is None:
    return None
  variables = {"params": params["position_bias"]} if "position_bias" in params else {}
  return np.asarray(module.apply(variables, positions, positions))


def project(x, p, spec):
  out = np.einsum(spec, np.asarray(x, np.float64), np.asarray(p["kernel"], np.float64))
  return out + np.asarray(p["bias"]) if "bias" in p else out


def rotate(cfg, x, positions):
  return np.asarray(get_position(cfg.position)(cfg).rotate(jnp.asarray(x, jnp.float32), positions))


@pytest.mark.parametrize("position", ["relative"])
def test_windowed_attention_equals_masked_full_attention(rng, position):
  b, t, n, k, h, w = 2, 23, 4, 2, 8, 5
  q = rng.standard_normal((b, t, n, h)).astype(np.float32)
  kk, v = (rng.standard_normal((b, t, k, h)).astype(np.float32) for _ in range(2))
  _, segment_ids, positions = random_packed_batch(rng, b, t, vocab=10)
  cfg = variant_config(position=position)
  bias_module = get_position(position)(cfg).score_bias()
  variables = bias_module.init(jax.random.PRNGKey(2), positions, positions)
  bias = bias_module.bind(variables)
  got = windowed_attention(q, kk, v, segment_ids, positions, w, bias)
  want = helpers.reference_attention(
      q, kk, v, helpers.allowed_mask(segment_ids, w), bias(positions, positions)
  )
  np.testing.assert_allclose(got, want, atol=ATOL)


@pytest.mark.parametrize("position", ["alibi"])
def test_sliding_module_equals_reference(rng, position):
  cfg = variant_config(attention="sliding", position=position, qkv_bias=True)
  module = get_attention("sliding")(cfg)
  p, x, segment_ids, positions = init_perturbed(module, rng)
  got = jax.jit(module.apply)({"params": p}, x, segment_ids, positions)
  q = rotate(cfg, project(x, p["query"], "btd,dnh->btnh"), positions)
  k = rotate(cfg, project(x, p["key"], "btd,dnh->btnh"), positions)
  v = project(x, p["value"], "btd,dnh->btnh")
  attn = helpers.reference_attention(
      q, k, v, helpers.allowed_mask(segment_ids, cfg.sliding.window), bias_of(cfg, p, positions)
  )
  np.testing.assert_allclose(got, np.einsum("btnh,nhd->btd", attn, p["out"]["kernel"]), atol=ATOL)


def mla_reference(cfg, p, x, segment_ids, positions):
  m = cfg.mla
  c_q = helpers.reference_rms_norm(project(x, p["q_down"], "btd,dc->btc"), p["q_norm"]["scale"])
  q_nope = project(c_q, p["q_up"], "btc,cnh->btnh")
  q_rope = rotate(cfg, project(c_q, p["q_rope"], "btc,cnh->btnh"), positions)
  c_kv = helpers.reference_rms_norm(project(x, p["kv_down"], "btd,dc->btc"), p["kv_norm"]["scale"])
  k_rope = rotate(cfg, project(x, p["k_rope"], "btd,dh->bth")[:, :, None], positions)
  k_nope = project(c_kv, p["k_up"], "btc,cnh->btnh")
  v = project(c_kv, p["v_up"], "btc,cnh->btnh")
  n = cfg.num_heads
  q = np.concatenate([q_nope, q_rope], -1)
  k = np.concatenate([k_nope, np.repeat(k_rope, n, axis=2)], -1)
  attn = helpers.reference_attention(
      q, k, v, helpers.allowed_mask(segment_ids), bias_of(cfg, p, positions),
      scale=(m.qk_head_dim + m.rope_dim) ** -0.5,
  )
  return np.einsum("btnh,nhd->btd", attn, p["out"]["kernel"])


@pytest.mark.parametrize("position", ["rope", "relative"])
def test_mla_equals_reference_and_absorbed_form(rng, position):
  cfg = variant_config(attention="mla", position=position)
  module = MultiHeadLatentAttention(cfg)
  p, x, segment_ids, positions = init_perturbed(module, rng)
  got = jax.jit(module.apply)({"params": p}, x, segment_ids, positions)
  np.testing.assert_allclose(got, mla_reference(cfg, p, x, segment_ids, positions), atol=ATOL)
  absorbed = jax.jit(lambda *a: module.apply(*a, method="absorbed"))(
      {"params": p}, x, segment_ids, positions
  )
  np.testing.assert_allclose(absorbed, got, atol=ATOL)


def nsa_reference(cfg, p, x, segment_ids, positions, select=True):
  """NSA written per query with full [T, T] masks: the selected branch's mask is the union of
  the chosen blocks' tokens (chosen exactly as the paper describes, one query at a time). With
  select=False the selected branch sees every earlier token of the document."""
  nsa, n, kh = cfg.nsa, cfg.num_heads, cfg.num_kv_heads
  b, t, _ = x.shape
  g = n // kh
  proj = lambda name: project(x, p[name], "btd,dnh->btnh")
  q = rotate(cfg, proj("query"), positions)
  keys = {br: rotate(cfg, proj(f"{br}_key"), positions) for br in ("compressed", "selected",
                                                                    "window")}
  values = {br: proj(f"{br}_value") for br in ("compressed", "selected", "window")}
  bias = bias_of(cfg, p, positions)
  causal = helpers.allowed_mask(segment_ids)

  # Compressed branch: one key per block [i d, i d + l), through the block MLP.
  m = (t - nsa.block_size) // nsa.stride + 1
  def compress(xs, name):
    out = np.zeros((b, m, kh, xs.shape[-1]))
    for i in range(m):
      block = xs[:, i * nsa.stride : i * nsa.stride + nsa.block_size]
      block = block + np.asarray(p[f"{name}_block_position"])[:, None]
      flat = block.transpose(0, 2, 1, 3).reshape(b, kh, -1)
      hidden = flat @ np.asarray(p[f"{name}_mlp_in"]["kernel"], np.float64)
      hidden = hidden / (1 + np.exp(-hidden))
      out[:, i] = hidden @ np.asarray(p[f"{name}_mlp_out"]["kernel"], np.float64)
    return out
  kc, vc = compress(keys["compressed"], "key"), compress(values["compressed"], "value")
  ends = np.arange(m) * nsa.stride + nsa.block_size - 1
  starts = np.arange(m) * nsa.stride
  cmp_ok = np.zeros((b, 1, t, m), bool)
  for bi in range(b):
    for ti in range(t):
      seg = segment_ids[bi, ti]
      cmp_ok[bi, 0, ti] = (ends <= ti) & (segment_ids[bi, starts] == seg) & (
          segment_ids[bi, ends] == seg) & (seg != 0)
  cmp_bias = None if bias is None else bias[:, :, :, ends]
  cmp_out = helpers.reference_attention(q, kc, vc, cmp_ok, cmp_bias)

  # Importance of compression block i for each query and head: its attention probability.
  scores = np.einsum("btnh,bmnh->bntm", q, np.repeat(kc, g, axis=2)) * q.shape[-1] ** -0.5
  scores = scores + (0 if cmp_bias is None else cmp_bias)
  scores = np.where(cmp_ok, scores, -np.inf)
  with np.errstate(invalid="ignore"):
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs = np.nan_to_num(probs / probs.sum(-1, keepdims=True))
  ls = nsa.select_size
  nblocks = -(-t // ls)
  sel_ok = np.zeros((b, n, t, t), bool)
  for bi in range(b):
    for ti in range(t):
      doc_start = ti
      while doc_start > 0 and segment_ids[bi, doc_start - 1] == segment_ids[bi, ti]:
        doc_start -= 1
      for kv in range(kh):
        heads = slice(kv * g, (kv + 1) * g)
        importance = np.zeros(nblocks)
        for j in range(nblocks):
          for i in range(m):
            if starts[i] < (j + 1) * ls and j * ls < starts[i] + nsa.block_size:
              importance[j] += probs[bi, heads, ti, i].sum()
          if j in (ti // ls, doc_start // ls):
            importance[j] = np.inf
          if j * ls > ti or j < doc_start // ls:
            importance[j] = -np.inf
        chosen = np.argsort(-importance, kind="stable")[: min(nsa.top_n, nblocks)]
        for j in chosen if select else range(nblocks):
          sel_ok[bi, heads, ti, j * ls : (j + 1) * ls] = True
  sel_out = helpers.reference_attention(
      q, keys["selected"], values["selected"], sel_ok & causal, bias
  )
  win_window = nsa.window if select else t
  win_out = helpers.reference_attention(
      q, keys["window"], values["window"], helpers.allowed_mask(segment_ids, win_window), bias
  )
  hidden = project(x, p["gate_hidden"], "btd,df->btf")
  gates = project(hidden / (1 + np.exp(-hidden)), p["gate"], "btf,fng->btng")
  gates = 1 / (1 + np.exp(-gates))
  mixed = gates[..., 0:1] * cmp_out + gates[..., 1:2] * sel_out + gates[..., 2:3] * win_out
  return np.einsum("btnh,nhd->btd", mixed, p["out"]["kernel"])


@pytest.mark.parametrize("position", ["alibi"])  # rope only rotates q and k: see the next test
def test_nsa_equals_reference(rng, position):
  cfg = variant_config(attention="nsa", position=position)
  module = NativeSparseAttention(cfg)
  p, x, segment_ids, positions = init_perturbed(module, rng)
  got = jax.jit(module.apply)({"params": p}, x, segment_ids, positions)
  np.testing.assert_allclose(got, nsa_reference(cfg, p, x, segment_ids, positions), atol=ATOL)


def test_nsa_with_everything_selected_is_gated_full_attention(rng):
  """top_n x l' covers the sequence and the window is the sequence: the selected and window
  branches are full causal attention with their own keys, mixed by the gates."""
  t = 24
  cfg = variant_config(attention="nsa", position="rope")
  nsa = dict(cfg.nsa.to_dict(), top_n=t // cfg.nsa.select_size, window=t)
  cfg = ml_collections.FrozenConfigDict(dict(cfg.to_dict(), nsa=nsa))
  module = NativeSparseAttention(cfg)
  p, x, segment_ids, positions = init_perturbed(module, rng, t=t)
  got = jax.jit(module.apply)({"params": p}, x, segment_ids, positions)
  want = nsa_reference(cfg, p, x, segment_ids, positions, select=False)
  np.testing.assert_allclose(got, want, atol=ATOL)


def shapes_in(jaxpr) -> list[tuple[int, ...]]:
  """Every intermediate shape in a jaxpr, sub-jaxprs included."""
  found = []
  for eqn in jaxpr.eqns:
    found += [tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape")]
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          found += shapes_in(inner)
  return found


def test_nsa_never_builds_a_t_by_t_matrix(rng):
  """No intermediate of the NSA forward and backward pass has two axes of length T."""
  t = 40
  cfg = variant_config(attention="nsa", position="alibi")
  module = NativeSparseAttention(cfg)
  p, x, segment_ids, positions = init_perturbed(module, rng, t=t)
  loss = lambda p, x: jnp.sum(module.apply({"params": p}, x, segment_ids, positions) ** 2)
  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(p, x).jaxpr
  shapes = shapes_in(jaxpr)
  assert any(t in s for s in shapes)
  assert not [s for s in shapes if s.count(t) >= 2]
  # The check can see a T x T matrix: full attention has one.
  gqa = get_attention("gqa")(cfg)
  gp = gqa.init(jax.random.PRNGKey(0), x, segment_ids, positions)
  gqa_shapes = shapes_in(jax.make_jaxpr(lambda v: gqa.apply(v, x, segment_ids, positions))(gp)
                         .jaxpr)
  assert [s for s in gqa_shapes if s.count(t) >= 2]


@pytest.mark.parametrize(
    "attention, position",
    [("mla", "alibi"), ("nsa", "relative"), ("sliding", "learned")],
)
def test_causal_and_documents_isolated(rng, attention, position):
  """Changing the future leaves the past alone; changing one packed document leaves the other
  alone; and each document's logits equal those of the document run alone (positions restart
  per document) -- except NSA's, whose blocks are aligned to the packed row, not the document."""
  cfg = variant_config(attention=attention, position=position,
                       num_kv_heads=2)
  model = Transformer(cfg)
  doc_a = rng.integers(1, 97, 13).astype(np.int32)
  doc_b = rng.integers(1, 97, 7).astype(np.int32)
  packed = np.concatenate([doc_a, doc_b, np.zeros(4, np.int32)])[None]
  segment_ids = np.array([[1] * 13 + [2] * 7 + [0] * 4], np.int32)
  positions = np.array([list(range(13)) + list(range(7)) + [0] * 4], np.int32)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), packed, segment_ids, positions)
  apply = jax.jit(model.apply)
  logits = apply(params, packed, segment_ids, positions)
  alone = lambda doc: apply(params, doc[None], np.ones((1, len(doc)), np.int32),
                            np.arange(len(doc), dtype=np.int32)[None])[0]
  if attention != "nsa":
    np.testing.assert_allclose(logits[0, :13], alone(doc_a), atol=ATOL)
    np.testing.assert_allclose(logits[0, 13:20], alone(doc_b), atol=ATOL)
  changed = packed.copy()
  changed[0, 9:13] = rng.integers(1, 97, 4)  # the end of document a
  logits2 = apply(params, changed, segment_ids, positions)
  np.testing.assert_allclose(logits[0, :9], logits2[0, :9], atol=1e-5)
  assert not np.allclose(logits[0, 9:13], logits2[0, 9:13], atol=1e-3)
  np.testing.assert_allclose(logits[0, 13:], logits2[0, 13:], atol=1e-5)
  changed[0, 13:15] = rng.integers(1, 97, 2)  # the start of document b
  logits3 = apply(params, changed, segment_ids, positions)
  np.testing.assert_allclose(logits2[0, :13], logits3[0, :13], atol=1e-5)


def test_kv_cache_bytes_by_hand():
  """2 layers; float32 (4 bytes) unless bfloat16 is asked for."""
  cfg = variant_config()
  with_attention = lambda a, **kw: ml_collections.ConfigDict(
      dict(cfg.to_dict(), attention=a, **kw)
  )
  assert kv_cache_bytes_per_token(with_attention("gqa")) == 2 * 2 * (2 * 8) * 4  # K, V: 2 x 8
  assert kv_cache_bytes_per_token(with_attention("mqa", num_kv_heads=1)) == 2 * 2 * 8 * 4
  assert kv_cache_bytes_per_token(with_attention("mla")) == 2 * (8 + 4) * 4  # latent + rope
  assert kv_cache_bytes_per_token(with_attention("mla", dtype="bfloat16")) == 2 * 12 * 2
  # NSA: raw + selected + window keys/values (6 x 16 values), compressed ones every 2 tokens.
  assert kv_cache_bytes_per_token(with_attention("nsa")) == 2 * (6 * 16 + 2 * 16 / 2) * 4


def test_mla_matmul_params_equal_module_params(rng):
  """MLA's FLOP count uses every attention weight except the two latent norm scales."""
  cfg = variant_config(attention="mla")
  params, *_ = init_perturbed(MultiHeadLatentAttention(cfg), rng)
  total = sum(x.size for x in jax.tree.leaves(params))
  norms = cfg.mla.q_latent_dim + cfg.mla.kv_latent_dim
  assert MultiHeadLatentAttention.matmul_params(cfg) == total - norms
  gqa = variant_config()
  per_layer = MultiHeadLatentAttention.matmul_params(cfg) - get_attention("gqa").matmul_params(gqa)
  assert matmul_params(cfg) - matmul_params(gqa) == cfg.num_layers * per_layer


def test_alibi_bias_broadcasts_over_leading_dims():
  bias = AlibiBias(4).apply({}, jnp.array([[[3]]]), jnp.array([[[1, 2, 3]]]))
  assert bias.shape == (1, 1, 4, 1, 3)
  np.testing.assert_allclose(bias[0, 0, 0, 0], [-0.5, -0.25, 0.0])


def test_rope_rotates_only_the_mla_rope_part(rng):
  """With position=none the rope projections are plain; with rope they are rotated."""
  x = jnp.asarray(rng.standard_normal((1, 3, 1, 4)), jnp.float32)
  positions = jnp.array([[0, 1, 2]])
  none = get_position("none")(variant_config()).rotate(x, positions)
  np.testing.assert_array_equal(none, x)
  np.testing.assert_allclose(
      get_position("rope")(variant_config()).rotate(x, positions), apply_rope(x, positions, 1e4),
      atol=1e-6,
  )
