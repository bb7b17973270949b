"""Each method at initialisation, and the adapter algebra against plain-matrix references."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from efficiency.model.transformer import Transformer
from efficiency.peft import int8 as int8_lib
from efficiency.peft import make_method
from efficiency.peft.dora import column_norm
from efficiency.peft.targets import layout_of
from tests.helpers import tiny_peft_config

ADAPTERS = ("lora", "lora_plus", "rslora", "dora", "pissa")


@functools.cache
def _base():
  """The tiny model's boxed init params and a jitted forward pass, built once for all tests."""
  config = tiny_peft_config("full")
  model = Transformer(ml_collections.FrozenConfigDict(config.model))
  tokens = jnp.asarray(np.random.default_rng(0).integers(1, 97, (2, 12)), jnp.int32)
  segments, positions = jnp.ones_like(tokens), jnp.broadcast_to(jnp.arange(12), tokens.shape)
  boxed = jax.jit(model.init)(jax.random.PRNGKey(0), tokens, segments, positions)["params"]
  apply = jax.jit(lambda p: model.apply({"params": p}, tokens, segments, positions))
  return boxed, apply


def _setup(method: str, **peft):
  boxed, apply = _base()
  method_obj, _ = make_method(tiny_peft_config(method, **peft))
  trainable, frozen = jax.jit(method_obj.split)(boxed, jax.random.PRNGKey(1))
  return method_obj, nn.meta.unbox(boxed), nn.meta.unbox(trainable), nn.meta.unbox(frozen), apply


@pytest.mark.parametrize("method", ADAPTERS + ("freeze", "full"))
def test_initial_model_equals_base(method):
  """B = 0 (LoRA family), m = ||W|| (DoRA), residual + principal part (PiSSA): logits unchanged."""
  m, base, trainable, frozen, apply = _setup(method)
  np.testing.assert_allclose(apply(jax.jit(m.combine)(trainable, frozen)), apply(base), atol=2e-5)
  if method in ("lora", "lora_plus", "rslora", "dora"):
    assert all(not np.any(b) for b in jax.tree.leaves(
        jax.tree_util.tree_map_with_path(
            lambda p, x: x if p[-1].key == "lora_b" else jnp.zeros(()), trainable)))


def test_pissa_residual_plus_adapter_is_w_and_adapter_is_principal():
  m, base, trainable, frozen, _ = _setup("pissa", rank=3)
  path = ("layers", "mlp", "down")
  layout = m.layouts[path]
  w = base["layers"]["mlp"]["down"]["kernel"]
  a, b = trainable["layers"]["mlp"]["down"]["lora_a"], trainable["layers"]["mlp"]["down"]["lora_b"]
  principal = m.scale * layout.product(a, b)
  np.testing.assert_allclose(frozen["layers"]["mlp"]["down"]["kernel"] + principal, w, atol=1e-5)
  for layer in range(w.shape[0]):  # the adapter holds exactly the top-3 singular values
    s_w = np.linalg.svd(np.asarray(w[layer]), compute_uv=False)
    s_p = np.linalg.svd(np.asarray(principal[layer]), compute_uv=False)
    np.testing.assert_allclose(s_p[:3], s_w[:3], rtol=1e-4)
    np.testing.assert_allclose(s_p[3:], 0, atol=1e-4)


def test_dora_magnitude_and_direction_reconstruct_w():
  m, base, trainable, frozen, _ = _setup("dora")
  for path, layout in m.layouts.items():
    w = base
    adapter = trainable
    for key in path:
      w, adapter = w[key], adapter[key]
    w = w["kernel"]
    np.testing.assert_allclose(
        adapter["magnitude"], np.squeeze(column_norm(layout, w), layout.contract_axes), rtol=1e-6
    )
    direction = w / column_norm(layout, w)
    rebuilt = np.expand_dims(adapter["magnitude"], layout.contract_axes) * direction
    np.testing.assert_allclose(rebuilt, w, atol=1e-6)
    np.testing.assert_allclose(m.effective(layout, w, adapter), w, atol=1e-6)


@pytest.mark.parametrize("spec,shape,names", [
    ("btd,dnh->btnh", (3, 8, 2, 5), ("layers", "embed", "heads", "head_dim")),
    ("btnh,nhd->btd", (3, 2, 5, 8), ("layers", "heads", "head_dim", "embed")),
    ("becd,edf->becf", (4, 8, 6), ("expert", "embed", "mlp")),
])
def test_adapter_product_matches_matrix_reference(spec, shape, names, rng):
  """x @ (W + A B) in the kernel's own layout equals the flattened (in x out) matrix product."""
  layout = layout_of(spec, shape, names)
  w = rng.normal(size=shape).astype(np.float32)
  a_shape = [shape[layout.letters.index(c)] for c in layout.batch + layout.contract] + [3]
  b_shape = [shape[layout.letters.index(c)] for c in layout.batch] + [3] + [
      shape[layout.letters.index(c)] for c in layout.out]
  a, b = rng.normal(size=a_shape).astype(np.float32), rng.normal(size=b_shape).astype(np.float32)
  batch_sizes = [shape[layout.letters.index(c)] for c in layout.batch]
  mat_a = a.reshape(*batch_sizes, layout.in_features, 3)
  mat_b = b.reshape(*batch_sizes, 3, -1)
  expected = np.asarray(layout.matrices(w)) + mat_a @ mat_b
  got = layout.matrices(w + np.asarray(layout.product(a, b)))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_int8_base_is_within_half_a_step_and_adapters_stay_float():
  m, base, trainable, frozen, apply = _setup("lora", base_quant="int8")
  node = frozen["layers"]["attn"]["query"]["kernel"]
  assert node["int8"].dtype == jnp.int8 and node["scale"].shape == (2, 1, 4, 8)
  w = base["layers"]["attn"]["query"]["kernel"]
  err = np.abs(int8_lib.dequantize(node["int8"], node["scale"]) - w)
  assert np.all(err <= node["scale"] / 2 + 1e-7)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(trainable))
  effective = m.combine(trainable, frozen)["layers"]["attn"]["query"]["kernel"]
  np.testing.assert_array_equal(effective, int8_lib.dequantize(node["int8"], node["scale"]))
  # An int8 base moves the logits by under 2% of their RMS on this 2-layer model.
  logits, quantized = np.asarray(apply(base)), np.asarray(apply(m.combine(trainable, frozen)))
  assert np.sqrt(np.mean((quantized - logits) ** 2)) < 0.02 * np.sqrt(np.mean(logits**2))
