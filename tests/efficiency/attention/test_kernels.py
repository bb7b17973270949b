"""Every attention implementation against the XLA reference, and what `auto` picks.

Inputs are random float32 rows of packed documents with trailing padding. Outputs must agree
with the reference to 2e-5 and gradients (of a random projection of the output) to 1e-4,
absolute, on O(1) values; a learned bias table's gradient, summed over many scores, to 5e-4.
The Pallas kernels run in interpret mode on CPU.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficiency.attention import attention_impl, training_case
from efficiency.attention.kernels import (
  CHUNKED_FROM_LEN,
  IMPLEMENTATIONS,
  choose,
  chunked,
  cudnn,
  pallas_gpu,
  splash_tpu,
  xla,
)
from efficiency.attention.kernels.case import AttentionCase
from efficiency.errors import ConfigError
from efficiency.model.transformer import Transformer
from efficiency.position.alibi import AlibiBias
from efficiency.position.relative import RelativeBias
from tests.helpers import random_packed_batch, run_module, tiny_config, tiny_model_config

FWD_TOL, GRAD_TOL, TABLE_TOL = 2e-5, 1e-4, 5e-4


def rows(seed: int, b: int, t: int, n: int, k: int, h: int, v: int | None = None):
  """Random q [B,T,N,H], k [B,T,K,H], v [B,T,K,V], packed segment ids and positions."""
  rng = np.random.default_rng(seed)
  _, segment_ids, positions = random_packed_batch(rng, b, t, vocab=2)
  q, key, value = (
      jnp.asarray(rng.standard_normal(shape), jnp.float32)
      for shape in ((b, t, n, h), (b, t, k, h), (b, t, k, v or h))
  )
  return q, key, value, jnp.asarray(segment_ids), jnp.asarray(positions)


def bias_module(name: str | None, n: int, positions):
  """The bias module of a position encoding, bound to random parameters, and its params."""
  if name is None:
    return None, None
  if name == "alibi":
    return AlibiBias(n).bind({}), None
  module = RelativeBias(n, num_buckets=8, max_distance=64, init_std=1.0)
  params = nn.unbox(module.init(jax.random.PRNGKey(3), positions, positions))["params"]
  return module, params


def outputs_and_grads(attend, q, k, v, segment_ids, positions, window, bias, bias_params):
  """attend's output and the gradients of sum(out * w) for q, k, v (and the bias table)."""
  w = jax.random.normal(jax.random.PRNGKey(9), (*q.shape[:3], v.shape[-1]))

  def loss(q, k, v, table):
    bound = bias
    if table is not None:
      bound = bias.bind({"params": table})
    out = attend(q, k, v, segment_ids, positions, window=window, bias=bound)
    return (out * w).sum(), out

  argnums = (0, 1, 2, 3) if bias_params is not None else (0, 1, 2)
  grads, out = jax.jit(jax.grad(loss, argnums, has_aux=True))(q, k, v, bias_params)
  return out, grads


def assert_matches_reference(attend, q, k, v, segment_ids, positions, window=None, bias=None):
  module, params = bias_module(bias, q.shape[2], positions)
  ref_out, ref_grads = outputs_and_grads(xla.attend, q, k, v, segment_ids, positions, window,
                                         module, params)
  out, grads = outputs_and_grads(attend, q, k, v, segment_ids, positions, window, module, params)
  np.testing.assert_allclose(out, ref_out, atol=FWD_TOL, rtol=0)
  for name, got, want in zip(("dq", "dk", "dv"), grads[:3], ref_grads[:3], strict=True):
    np.testing.assert_allclose(got, want, atol=GRAD_TOL, rtol=0, err_msg=name)
  if params is not None:
    np.testing.assert_allclose(
        grads[3]["embedding"], ref_grads[3]["embedding"], atol=TABLE_TOL, rtol=0
    )
  padding = np.asarray(segment_ids) == 0
  assert padding.any() and not np.asarray(out)[padding].any()  # padding queries output 0


def blocked(block: int):
  """The chunked implementation with a small block, so a short row spans several blocks."""
  def attend(*args, **kwargs):
    bias = kwargs.pop("bias")
    return chunked.chunked_attention(
        *args, bias=None if bias is None else bias.as_function(), block=block, **kwargs
    )
  return attend


@pytest.mark.parametrize("num_kv_heads,window", [
    (2, None), (2, 37), pytest.param(4, None, marks=pytest.mark.slow),
    pytest.param(1, 37, marks=pytest.mark.slow),
], ids=["gqa", "gqa-window", "mha", "mqa-window"])
def test_chunked_equals_reference(num_kv_heads, window):
  # 100 tokens in blocks of 32: a padded last block, and windows that start mid-block.
  arrays = rows(0, 2, 100, 4, num_kv_heads, 16)
  assert_matches_reference(blocked(32), *arrays, window=window)


@pytest.mark.parametrize("bias,window", [
    ("relative", None), ("alibi", 37), pytest.param("relative", 37, marks=pytest.mark.slow),
    pytest.param("alibi", None, marks=pytest.mark.slow),
])
def test_chunked_with_position_bias_equals_reference(bias, window):
  assert_matches_reference(blocked(32), *rows(1, 2, 100, 4, 2, 16), window=window, bias=bias)


def test_chunked_with_own_value_dim_equals_reference():
  """MLA's expanded form: keys of qk + rope dims, values of another width."""
  assert_matches_reference(blocked(32), *rows(2, 2, 70, 4, 4, 12, v=10))


def test_chunked_bfloat16_is_close_to_float32_reference():
  q, k, v, segment_ids, positions = rows(3, 2, 100, 4, 2, 16)
  ref = xla.attend(q, k, v, segment_ids, positions)
  low = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  got = blocked(32)(*low, segment_ids, positions, bias=None)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(got.astype(jnp.float32), ref, atol=3e-2, rtol=0)


def test_cudnn_call_equals_reference():
  """The arguments the cudnn implementation gives `jax.nn.dot_product_attention` (masks, causal
  flag, window, GQA, scale), run through that function's XLA path on CPU."""
  def attend(*args, **kwargs):
    return cudnn.attend(*args, implementation="xla", **kwargs)

  for window in (None, 37):
    assert_matches_reference(attend, *rows(4, 2, 100, 4, 2, 16), window=window)


def test_pallas_gpu_kernel_equals_reference():
  def attend(*args, **kwargs):
    return pallas_gpu.attend(*args, interpret=True, **kwargs)

  assert_matches_reference(attend, *rows(5, 1, 160, 4, 2, 16))


def test_splash_tpu_kernel_equals_reference():
  def attend(*args, **kwargs):
    return splash_tpu.attend(*args, interpret=True, **kwargs)

  for window in (None, 37):
    assert_matches_reference(attend, *rows(6, 1, 200, 2, 1, 32), window=window)


def grad_temp_bytes(attend, t: int) -> int:
  """XLA's temporary bytes for the gradient of attention over one row of t tokens."""
  q, k, v, segment_ids, positions = rows(7, 1, t, 2, 2, 32)

  def loss(q, k, v):
    return attend(q, k, v, segment_ids, positions, bias=None).sum()

  compiled = jax.jit(jax.grad(loss, (0, 1, 2))).lower(q, k, v).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_chunked_memory_grows_linearly_in_sequence_length():
  """Doubling T at most doubles the chunked gradient's scratch memory (its [block, block] tiles
  are fixed; measured 1.09x) while XLA's grows with the T x T scores (3.2x)."""
  chunked_ratio = grad_temp_bytes(chunked.attend, 2048) / grad_temp_bytes(chunked.attend, 1024)
  xla_ratio = grad_temp_bytes(xla.attend, 2048) / grad_temp_bytes(xla.attend, 1024)
  assert chunked_ratio <= 2.0, chunked_ratio
  assert xla_ratio > 3.0, xla_ratio


def case(**overrides) -> AttentionCase:
  fields = dict(seq_len=2048, num_heads=8, num_kv_heads=2, head_dim=64, value_dim=64,
                dtype="bfloat16")
  return AttentionCase(**{**fields, **overrides})


def test_auto_picks_by_platform_and_case():
  assert choose("auto", case(), "cpu") == "chunked"
  assert choose("auto", case(seq_len=CHUNKED_FROM_LEN - 1), "cpu") == "xla"
  assert choose("auto", case(quantized=True), "cpu") == "xla"
  assert choose("auto", case(), "gpu") == "cudnn"
  assert choose("auto", case(dtype="float32"), "gpu") == "pallas_gpu"
  assert choose("auto", case(bias="learned"), "gpu") == "chunked"
  assert choose("auto", case(window=128, dtype="float32"), "gpu") == "chunked"
  assert choose("auto", case(), "tpu") == "splash_tpu"
  assert choose("auto", case(value_dim=32), "tpu") == "chunked"


def test_named_implementation_that_cannot_run_is_one_clear_error():
  with pytest.raises(ConfigError, match=r"'cudnn' cannot run .* needs an NVIDIA GPU .* valid"):
    choose("cudnn", case(), "cpu")
  with pytest.raises(ConfigError, match=r"'chunked' cannot run .*quant.attention"):
    choose("chunked", case(quantized=True), "cpu")
  with pytest.raises(ConfigError, match=r"attention_impl='flash' is unknown; valid choices"):
    choose("flash", case(), "cpu")
  for name in IMPLEMENTATIONS:  # every name is a valid choice where it can run
    platform = {"cudnn": "gpu", "pallas_gpu": "gpu", "splash_tpu": "tpu"}.get(name, "cpu")
    assert choose(name, case(), platform) == name


def test_config_level_choice_matches_the_module_case(monkeypatch):
  """What summary.json reports (from the config) is what the model's attention asks for."""
  seen = []
  original = choose

  def recording(name, call_case, platform):
    seen.append(call_case)
    return original(name, call_case, platform)

  monkeypatch.setattr("efficiency.attention.kernels.choose", recording)
  for attention, position in (("gqa", "rope"), ("sliding", "alibi"), ("mla", "relative")):
    config = tiny_config()
    config.model = tiny_model_config(attention=attention, position=position)
    config.model.mla.update(kv_latent_dim=8, q_latent_dim=12, rope_dim=4, qk_head_dim=6,
                            v_head_dim=10)
    seen.clear()
    tokens = jnp.ones((1, config.seq_len), jnp.int32)
    jax.eval_shape(Transformer(config.model).init, jax.random.PRNGKey(0), tokens, tokens,
                   jnp.zeros_like(tokens))
    assert set(seen) == {training_case(config)}, attention
    assert attention_impl(config) == "xla"  # 16 tokens: short rows keep the XLA form


@pytest.mark.parametrize("attention,position", [
    ("gqa", "relative"), pytest.param("sliding", "rope", marks=pytest.mark.slow),
])
def test_model_with_chunked_attention_equals_xla(attention, position, monkeypatch):
  """A whole model's loss and parameter gradients are the same under either implementation."""
  monkeypatch.setattr(chunked, "BLOCK", 8)  # 24 tokens: three blocks
  rng = np.random.default_rng(8)
  tokens, segment_ids, positions = (jnp.asarray(x) for x in random_packed_batch(rng, 2, 24, 97))

  def loss_and_grads(impl):
    cfg = tiny_model_config(attention=attention, position=position, attention_impl=impl,
                            sliding={"window": 5})
    model = Transformer(cfg)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), tokens, segment_ids, positions)

    def loss(params):
      return model.apply(params, tokens, segment_ids, positions).astype(jnp.float32).std()

    return jax.jit(jax.value_and_grad(loss))(params)

  (loss_xla, grads_xla), (loss_chunked, grads_chunked) = map(loss_and_grads, ("xla", "chunked"))
  np.testing.assert_allclose(loss_chunked, loss_xla, rtol=1e-5)
  for got, want in zip(jax.tree.leaves(grads_chunked), jax.tree.leaves(grads_xla), strict=True):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_fused_kernel_call_under_shard_map_equals_the_whole_call():
  """Rows over data/fsdp/expert and heads over tensor (or, with 1 KV head, all heads on every
  tensor shard): the per-device call's output and gradient equal the call on whole arrays."""
  result = run_module("tests.efficiency.attention.sharded_kernel", devices=8)
  assert result["kv2_data2_fsdp2_tensor2"]["rows"] == ["data", "fsdp"]
  assert result["kv2_data2_fsdp2_tensor2"]["heads"] == "tensor"
  assert result["kv1_data4_tensor2"]["heads"] is None  # 1 KV head: tensor does not divide it
  assert result["kv2_fsdp2_expert4"]["rows"] == ["fsdp", "expert"]
  for case in result.values():
    assert case["out"] < 1e-5 and case["grad"] < 1e-4, result
