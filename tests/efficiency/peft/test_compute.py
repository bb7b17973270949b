"""PEFT training computes only what the trainable tree needs: adapters in the forward pass (same
gradients as the merged-kernel formulation, no dL/dW in the compiled step), no backward pass
through frozen layers (from XLA's cost analysis), and a QLoRA int4 base."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from efficiency.errors import ConfigError
from efficiency.model.adapter import adapted
from efficiency.model.transformer import make_model
from efficiency.peft import PEFT_METHODS, int4, make_method
from efficiency.quant.pack import quantize_int4
from efficiency.serving.export import convert
from efficiency.train.measure import step_flops
from efficiency.train.setup import Training
from efficiency.train.step import summed_loss
from efficiency.workdir.restore import TrainedModel
from tests.helpers import packed_batch, run_peft, tiny_model_config, tiny_peft_config

ADAPTERS = ("lora", "lora_plus", "rslora", "dora", "pissa")


def _perturbed_split(config, seed: int = 1):
  """The method, base model, frozen tree and a trainable tree moved off its init (B != 0)."""
  method, _ = make_method(config)
  model = make_model(config)
  tokens = jnp.zeros((1, config.seq_len), jnp.int32)
  boxed = jax.jit(model.init)(jax.random.PRNGKey(0), tokens, tokens + 1, tokens)["params"]
  trainable, frozen = jax.jit(method.split)(boxed, jax.random.PRNGKey(seed))
  trainable, frozen = nn.meta.unbox(trainable), nn.meta.unbox(frozen)
  leaves, tree = jax.tree.flatten(trainable)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  moved = [x + 0.05 * jax.random.normal(k, x.shape, x.dtype)
           for x, k in zip(leaves, keys, strict=True)]
  return method, model, jax.tree.unflatten(tree, moved), frozen


def _gradients(config):
  """((loss, gradients of the trainable tree) as training computes them, as the merged-kernel
  formulation computes them: the loss of `combine`'s params on the untouched model)."""
  method, model, trainable, frozen = _perturbed_split(config)
  batch = jax.tree.map(jnp.asarray, packed_batch(np.random.default_rng(0), config))
  rng = jax.random.PRNGKey(3)
  train_model = method.train_model(model)
  ours = lambda p: summed_loss(method.apply_params(p, frozen), batch, train_model, rng)[0]
  merged = lambda p: summed_loss(method.combine(p, frozen), batch, model, rng)[0]
  return (jax.jit(jax.value_and_grad(ours))(trainable),
          jax.jit(jax.value_and_grad(merged))(trainable))


def _assert_trees_close(got, want, rtol: float = 2e-4):
  for (path, g), w in zip(
      jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True
  ):
    scale = float(np.abs(w).max())
    assert scale > 0, path
    np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * scale, err_msg=str(path))


# The default run covers the adapter, PiSSA's residual and freeze's split; DoRA's norm (its
# training, sharding and reconstruction are tested by default elsewhere, this compile alone took
# two minutes), the methods that only rescale (rslora, lora_plus) and full run under -m slow.
DEFAULT_METHODS = ("freeze", "lora", "pissa")


@pytest.mark.parametrize("method", [
    m if m in DEFAULT_METHODS else pytest.param(m, marks=pytest.mark.slow)
    for m in sorted(PEFT_METHODS)
])
def test_gradients_equal_merged_kernel_formulation(method):
  peft = {"last_layers": 1} if method == "freeze" else {}
  _assert_trees_close(*_gradients(tiny_peft_config(method, **peft)))


@pytest.mark.slow  # by default the int4 base is checked with adapters on its last layer (below)
@pytest.mark.parametrize("method,base_quant", [("lora", "int4"), ("dora", "int8")])
def test_gradients_equal_merged_on_quantized_base(method, base_quant):
  _assert_trees_close(*_gradients(tiny_peft_config(method, base_quant=base_quant)))


@pytest.mark.parametrize("method,base_quant", [
    ("pissa", "none"), ("lora", "int4"), pytest.param("dora", "int8", marks=pytest.mark.slow)])
def test_adapters_on_the_last_layer_equal_merged_formulation(method, base_quant):
  """peft.adapter_layers=1 of 2: the first layer is a frozen prefix (its base alone, float or
  codes) and the merged kernels change only the last layer."""
  config = tiny_peft_config(method, base_quant=base_quant, adapter_layers=1)
  method_obj, _, trainable, frozen = _perturbed_split(config)
  assert method_obj.frozen_layers == 1
  assert all(leaf.shape[0] == 1 for leaf in jax.tree.leaves(trainable["layers"]))
  _assert_trees_close(*_gradients(config))
  merged = method_obj.combine(trainable, frozen)["layers"]["mlp"]["up"]["kernel"]
  base = method_obj.combine(jax.tree.map(jnp.zeros_like, trainable), frozen)
  base = base["layers"]["mlp"]["up"]["kernel"]
  np.testing.assert_array_equal(merged[0], base[0])
  assert not np.allclose(merged[1], base[1])


def test_adapter_layers_out_of_range_is_a_config_error():
  with pytest.raises(ConfigError, match=r"peft.adapter_layers=3 is invalid; valid choices: 0..2"):
    tiny_peft_config("lora", adapter_layers=3)


def _moe_mla_config(method: str):
  config = tiny_peft_config(method)
  config.model = tiny_model_config(
      attention="mla", moe={"num_experts": 4, "dispatch": "capacity"},
      mla={"kv_latent_dim": 16, "q_latent_dim": 24, "rope_dim": 8, "qk_head_dim": 8,
           "v_head_dim": 8},
  )
  return config


def test_adapters_cover_moe_experts_and_mla_latents():
  method_obj, _ = make_method(_moe_mla_config("lora"))
  names = {"/".join(p) for p in method_obj.layouts}
  assert {"layers/moe/gate", "layers/moe/down", "layers/attn/kv_down", "layers/attn/q_up"} <= names


@pytest.mark.slow  # four compiles of an MoE + MLA model: over two minutes of the default run
@pytest.mark.parametrize("method", ["lora", "dora"])
def test_gradients_equal_merged_on_moe_experts_and_mla_latents(method):
  _assert_trees_close(*_gradients(_moe_mla_config(method)))


# Compiled steps: what XLA is asked to compute.

@functools.cache
def _compiled(method: str, **peft):
  config = tiny_peft_config(method, **peft)
  training = Training(config)
  example = packed_batch(np.random.default_rng(0), config)
  return training, example, training.compile(example)[0]


def _dot_output_shapes(hlo: str) -> set[tuple[int, ...]]:
  """Output shapes of every dot in compiled HLO text."""
  shapes = set()
  for match in re.finditer(r"= f32\[([\d,]*)\][^ ]* dot\(", hlo):
    shapes.add(tuple(int(d) for d in match.group(1).split(",") if d))
  return shapes


def test_lora_step_forms_no_weight_gradient():
  """The MLP kernels' dL/dW is a dot of shape [d_model, d_ff] or [d_ff, d_model] (32 x 64 in the
  tiny model, a shape no other product has): full fine-tuning computes it, LoRA does not."""
  kernel_shapes = {(32, 64), (64, 32)}
  *_, full = _compiled("full")
  *_, lora = _compiled("lora")
  assert kernel_shapes <= _dot_output_shapes(full.as_text())
  assert not kernel_shapes & _dot_output_shapes(lora.as_text())


def _dot_contracted_sizes(hlo: str) -> set[int]:
  """Sizes of the lhs contracting dim of every dot in compiled HLO text (operand shapes looked
  up from their definitions, fusion parameters included)."""
  shapes = {name: [int(d) for d in dims.split(",") if d] for name, dims in
            re.findall(r"%([\w.\-]+) = \w+\[([\d,]*)\]", hlo)}
  sizes = set()
  for lhs, dims in re.findall(r" dot\(%([\w.\-]+), %[\w.\-]+\).*?lhs_contracting_dims=\{(\d+)\}",
                              hlo):
    sizes.add(shapes[lhs][int(dims)])
  return sizes


def test_lora_fuses_base_and_adapter_products_into_one_dot():
  """Each adapted projection is one dot [x, x A] @ [W; B] forward and one [g, g B^T] @ [W^T; A^T]
  backward: the tiny model's MLP gives dots contracting d_model + rank and d_ff + rank."""
  config = tiny_peft_config("lora")
  fused = {config.model.d_model + config.peft.rank, config.model.d_ff + config.peft.rank}
  *_, lora = _compiled("lora")
  *_, full = _compiled("full")
  assert fused <= _dot_contracted_sizes(lora.as_text())
  assert not fused & _dot_contracted_sizes(full.as_text())


@functools.cache
def _flops(method: str, layers: int, **peft) -> float:
  config = tiny_peft_config(method, **peft)
  config.model.num_layers = layers
  training = Training(config)
  return step_flops(training, packed_batch(np.random.default_rng(0), config))


@pytest.mark.parametrize("method,peft", [("freeze", {"last_layers": 1}),
                                         ("lora", {"adapter_layers": 1})])
def test_frozen_layers_cost_forward_only(method, peft):
  """Two more frozen layers add their forward FLOPs only: a third of what two more trained
  layers add to full fine-tuning (backward = 2 x forward for every matmul)."""
  added_full = _flops("full", 4) - _flops("full", 2)
  added_frozen = _flops(method, 4, **peft) - _flops(method, 2, **peft)
  assert added_full > 0
  np.testing.assert_allclose(added_frozen, added_full / 3, rtol=0.1)


# QLoRA: an int4 base.

@pytest.fixture(scope="module")
def int4_lora():
  return run_peft(tiny_peft_config("lora", base_quant="int4", base_group_size=16), steps=4)


def test_int4_base_is_packed_within_half_a_step_of_float(int4_lora):
  initial, *_ = int4_lora
  node = initial.frozen["layers"]["mlp"]["up"]["kernel"]
  assert set(node) == {"int4", "scale"}
  assert node["int4"].dtype == np.uint8 and node["int4"].shape == (2, 16, 64)  # K 32 / 2
  assert node["scale"].shape == (2, 2, 64)  # 32 / group 16 groups per column
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(initial.params))


def test_int4_initial_model_is_the_served_int4_model(int4_lora):
  """QLoRA starts from exactly the serving int4 packing of the float base (the same nibbles and
  scales, so the same logits): every weight within half a quantization step of its float value,
  and the logits equal the float model's with the dequantized kernels."""
  initial, _, _, training = int4_lora
  config, method = training.config, training.method
  model = make_model(config)
  tokens = jnp.asarray(packed_batch(np.random.default_rng(1), config)["inputs"])
  segments, positions = jnp.ones_like(tokens), jnp.broadcast_to(jnp.arange(16), tokens.shape)
  apply = jax.jit(lambda m, p: m.apply({"params": p}, tokens, segments, positions),
                  static_argnums=0)
  ours = apply(method.train_model(model), method.apply_params(initial.params, initial.frozen))
  np.testing.assert_allclose(ours, apply(model, method.combine(initial.params, initial.frozen)),
                             atol=1e-5)
  float_training = Training(tiny_peft_config("full"))  # the same init, unquantized
  float_params = jax.device_get(float_training.init(config.seed).params)
  served = convert(TrainedModel(config, model, float_params, 0, None), 4, "float32", 16)
  np.testing.assert_allclose(ours, apply(served.model, served.params), atol=1e-5)
  assert np.abs(ours - apply(model, float_params)).max() > 1e-3  # int4 rounding shows
  for path, layout in method.layouts.items():
    node, w, kept = initial.frozen, float_params, served.params
    for key in path:
      node, w, kept = node[key], w[key], kept[key]
    np.testing.assert_array_equal(node["kernel"]["int4"], kept["kernel_int4"])
    q = int4.dequantize(layout, node["kernel"]["int4"], node["kernel"]["scale"], jnp.float32)
    step = np.repeat(node["kernel"]["scale"], 16, axis=1)  # [L, K, M], the matrix view
    err = np.abs(np.asarray(layout.matrices(q) - layout.matrices(w["kernel"])))
    assert np.all(err <= step / 2 + 1e-6), path


def test_int4_lora_trains_and_keeps_its_base_bitwise(int4_lora):
  initial, final, losses, _ = int4_lora
  assert losses[-1] < losses[0]
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(final.frozen), initial.frozen)


def test_int4_group_size_must_divide_the_contracted_size():
  from efficiency.errors import ConfigError

  with pytest.raises(ConfigError, match=r"^peft.base_group_size=24 does not fit layers/attn/query"):
    tiny_peft_config("lora", base_quant="int4", base_group_size=24)


def test_int4_base_is_saved_for_backward_as_codes_not_floats(capsys):
  """Between the forward and the backward pass only the packed codes and scales of the base are
  kept (the float kernel is rematerialized inside the matmul's backward), as QLoRA needs."""
  spec, shape = "btd,df->btf", (64, 96)
  w = jax.random.normal(jax.random.PRNGKey(0), shape)
  packed, scale = quantize_int4(w, spec, 32)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 64))

  def loss(a, b, x):
    params = {"kernel_int4": packed, "kernel_scale": scale, "lora_a": a, "lora_b": b}
    return jnp.sum(adapted(spec, x, params, shape, jnp.einsum) ** 2)

  print_saved_residuals(loss, jnp.ones((64, 4)), jnp.ones((4, 96)), x)
  saved = capsys.readouterr().out
  assert "u8[32,96]" in saved and "f32[2,96]" in saved  # codes, scales of 2 groups
  assert "f32[64,96]" not in saved and "f32[96,64]" not in saved  # no float kernel
