"""The chunked loss (`model.loss_chunk`, efficiency.train.loss) against the plain loss over full
logits: same loss, gradients and eval sums; the projection's FLOPs once; no [B, T, V] buffer."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from efficiency.config import resolve
from efficiency.evaluation import batch_sums, row_losses
from efficiency.model.transformer import make_model
from efficiency.train.loss import chunked_loss_sum
from efficiency.train.plan import BATCH_DTYPES
from efficiency.train.setup import Training
from efficiency.train.step import summed_loss
from tests.helpers import (
  init_params,
  packed_batch,
  run_module,
  run_peft,
  tiny_config,
  tiny_peft_config,
)

CHUNK = 5  # divides neither the 13 positions nor the 97-token vocabulary


def _loss_and_grads(config, chunk: int, batch, params):
  """(objective, grads, eval sums, row losses) of `config` with `model.loss_chunk=chunk`."""
  config = config.copy_and_resolve_references()
  config.model.loss_chunk = chunk
  model = make_model(config)

  def everything(p):
    loss = lambda q: summed_loss(q, batch, model, jax.random.PRNGKey(2))
    (objective, _), grads = jax.value_and_grad(loss, has_aux=True)(p)
    sums = batch_sums(p, batch, model, jnp.arange(97.0))
    return objective, grads, sums, row_losses(p, batch, model)

  return jax.jit(everything)(params)


@pytest.mark.parametrize("tie,quant", [(True, "none"), (False, "int8_fwd")],
                         ids=["tied-float", "untied-int8"])
def test_loss_gradients_and_eval_equal_plain(tie, quant):
  """Packed rows with padding (weight-0 targets), a chunk dividing neither T nor V; float
  logits, and AQT int8 logits (`quant.logits`; int8_fwd: deterministic gradients). Tolerances:
  float32 sums in another order."""
  config = tiny_config(seq_len=13, batch_size=3)
  config.model.update(num_layers=1, tie_embeddings=tie)
  config.quant.update(mode=quant, logits=True)
  batch = {k: jnp.asarray(v) for k, v in packed_batch(np.random.default_rng(0), config).items()}
  assert 0 < float(batch["weights"].mean()) < 1
  params = init_params(make_model(config))
  plain = _loss_and_grads(config, 0, batch, params)
  chunked = _loss_and_grads(config, CHUNK, batch, params)
  np.testing.assert_allclose(chunked[0], plain[0], rtol=1e-6)
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(plain[1]))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * scale),
               chunked[1], plain[1])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), chunked[2], plain[2])
  np.testing.assert_allclose(chunked[3], plain[3], rtol=1e-6)


def _dot_flops(jaxpr) -> int:
  """FLOPs of the matmuls a jaxpr runs, scan bodies times their length (before XLA's CSE, which
  could hide a recomputed projection)."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in contract)
    times = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
    for value in eqn.params.values():
      for sub in value if isinstance(value, tuple | list) else (value,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          total += times * _dot_flops(sub)
  return total


def test_projection_flops_once():
  """The gradient of the chunked loss does the projection's forward and two gradient products
  once, as the plain loss does: in XLA's cost analysis (scan unrolled, so every chunk counts)
  and in the matmuls of the traced program (no recompute for XLA to merge away)."""
  b, t, d, v = 2, 64, 128, 512
  head = lambda p, x, _: jnp.einsum("bcd,vd->bcv", x, p["w"])
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  params = {"w": jax.random.normal(keys[0], (v, d))}
  x_BTD = jax.random.normal(keys[1], (b, t, d))
  targets_BT = jax.random.randint(keys[2], (b, t), 0, v)
  weights_BT = jnp.ones((b, t))

  def plain(p, x):
    losses = optax.softmax_cross_entropy_with_integer_labels(head(p, x, None), targets_BT)
    return jnp.sum(losses * weights_BT)

  chunked = lambda p, x, unroll=True: chunked_loss_sum(
      head, p, x, targets_BT, weights_BT, jax.random.PRNGKey(0), 16, unroll=unroll)
  flops = {}
  for name, fn in (("plain", plain), ("chunked", chunked)):
    grad = jax.jit(jax.grad(fn, argnums=(0, 1)))
    cost = grad.lower(params, x_BTD).compile().cost_analysis()
    flops[name] = (cost[0] if isinstance(cost, list) else cost)["flops"]
  matmuls = 3 * 2 * b * t * d * v
  assert matmuls < flops["plain"] < 1.1 * matmuls
  assert 0.95 < flops["chunked"] / flops["plain"] < 1.05, flops
  traced = jax.make_jaxpr(jax.grad(lambda p, x: chunked(p, x, False), argnums=(0, 1)))
  assert _dot_flops(traced(params, x_BTD).jaxpr) == matmuls


def _compiled_step(chunk: int):
  config = tiny_config(batch_size=4, seq_len=128)
  config.model.update(num_layers=1, vocab_size=4096, loss_chunk=chunk)
  training = Training(resolve(config, jax.device_count()))
  example = {k: np.zeros((1, 1), dtype) for k, dtype in BATCH_DTYPES.items()}
  return training.compile(example)[0]


def test_step_memory_without_full_logits():
  """At 4 x 128 tokens over 4096 words the float32 logits are 8 MiB: the compiled chunked step
  needs about that much less temporary memory, and its HLO holds no [B, T, V] f32 buffer
  (also not with batch and length merged)."""
  logits_bytes = 4 * 128 * 4096 * 4
  full = re.compile(r"f32\[(4,128|512),4096\]")
  plain, chunked = _compiled_step(0), _compiled_step(32)
  assert full.search(plain.as_text())
  assert not full.search(chunked.as_text())
  saved = plain.memory_analysis().temp_size_in_bytes - chunked.memory_analysis().temp_size_in_bytes
  assert saved > 0.75 * logits_bytes, saved


def test_peft_steps_equal_plain():
  """LoRA training (adapters combined into the params the head applies) gives the same losses
  and trained params with and without chunks."""
  runs = {}
  for chunk in (0, 6):
    config = tiny_peft_config("lora")
    config.model.loss_chunk = chunk
    _, state, losses, _ = run_peft(config, steps=2)
    runs[chunk] = (losses, jax.device_get(state.params))
  np.testing.assert_allclose(runs[6][0], runs[0][0], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               runs[6][1], runs[0][1])


@pytest.mark.slow  # two subprocesses, one of 8 devices
def test_sharded_chunked_loss_equals_single_device_plain():
  """Over data x fsdp x tensor (the vocabulary split over tensor) with 6-position chunks of
  16-token rows: the losses of one device's plain loss."""
  run = lambda devices, *args: run_module("tests.efficiency.train.sharded_steps",
                                          *map(str, args), devices=devices)
  single = run(1, 1, 1, 1, "--attention_impl=xla")
  sharded = run(8, 2, 2, 2, "--attention_impl=xla", "--loss_chunk=6")
  np.testing.assert_allclose(sharded["losses"], single["losses"], rtol=1e-4)
