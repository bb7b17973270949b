"""The chunked loss (`model.loss_chunk`, efficiency.train.loss) against the plain loss over full
logits: same loss, gradients and eval sums; the projection's FLOPs once; no [B, T, V] buffer."""

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
from tests.helpers import init_params, packed_batch, run_peft, tiny_config, tiny_peft_config

CHUNK = 5  # divides neither the 13 positions nor the 97-token vocabulary


def _loss_and_grads(config, chunk: int, batch, params):
  config = config.copy_and_resolve_references()
  config.model.loss_chunk = chunk
  model = make_model(config)
  loss = lambda p: summed_loss(p, batch, model, jax.random.PRNGKey(2))
  (objective, stats), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  sums = jax.jit(lambda p: batch_sums(p, batch, model, jnp.arange(97.0)))(params)
  rows = jax.jit(lambda p: row_losses(p, batch, model))(params)
  return objective, grads, sums, rows


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("quant", ["none", "int8_fwd"])
def test_loss_gradients_and_eval_equal_plain(tie, quant):
  """Packed rows with padding (weight-0 targets), a chunk dividing neither T nor V; float and
  AQT int8 logits (`quant.logits`). Tolerances: float32 sums in another order."""
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


def test_projection_flops_once():
  """XLA's cost analysis of the gradient: the chunked loss (scan unrolled, so every chunk is
  counted) does the projection's forward and two gradient products once, as the plain loss."""
  b, t, d, v = 2, 64, 16, 512
  head = lambda p, x, _: jnp.einsum("bcd,vd->bcv", x, p["w"])
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  params = {"w": jax.random.normal(keys[0], (v, d))}
  x_BTD = jax.random.normal(keys[1], (b, t, d))
  targets_BT = jax.random.randint(keys[2], (b, t), 0, v)
  weights_BT = jnp.ones((b, t))

  def plain(p, x):
    losses = optax.softmax_cross_entropy_with_integer_labels(head(p, x, None), targets_BT)
    return jnp.sum(losses * weights_BT)

  chunked = lambda p, x: chunked_loss_sum(head, p, x, targets_BT, weights_BT,
                                          jax.random.PRNGKey(0), 16, unroll=True)
  flops = {}
  for name, fn in (("plain", plain), ("chunked", chunked)):
    grad = jax.jit(jax.grad(fn, argnums=(0, 1)))
    cost = grad.lower(params, x_BTD).compile().cost_analysis()
    flops[name] = (cost[0] if isinstance(cost, list) else cost)["flops"]
  matmuls = 3 * 2 * b * t * d * v
  assert flops["plain"] > matmuls
  assert 0.9 < flops["chunked"] / flops["plain"] < 1.1, flops


def _compiled_step(chunk: int):
  config = tiny_config(batch_size=4, seq_len=256)
  config.model.update(num_layers=1, vocab_size=8192, loss_chunk=chunk)
  training = Training(resolve(config, jax.device_count()))
  example = {k: np.zeros((1, 1), dtype) for k, dtype in BATCH_DTYPES.items()}
  return training.compile(example)[0]


def test_step_memory_without_full_logits():
  """At 4 x 256 tokens over 8192 words the float32 logits are 32 MiB: the compiled chunked step
  needs about that much less temporary memory, and its HLO holds no [B, T, V] f32 buffer
  (also not with batch and length merged)."""
  logits_bytes = 4 * 256 * 8192 * 4
  full = re.compile(r"f32\[(4,256|1024),8192\]")
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
