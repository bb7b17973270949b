"""Cross-entropy over sequence chunks, so the float32 logits [B, T, V] never exist at once.

With `model.loss_chunk` = C > 0 the model returns its final hidden states [B, T, D] and the loss
applies the logits projection (`LogitsHead`: tied or untied, quantized or adapted as the model's
own) to C positions of every row at a time, in a `lax.scan`: at most [B, C, V] logits are live.
The training loss is a `custom_vjp` whose forward pass also computes the gradients of the summed
loss with respect to the hidden states and the head's params, chunk by chunk (the softmax minus
the one-hot target, pulled back through the head); its backward pass only scales them by the
incoming cotangent. So the projection runs once forward and its two gradient products once, as
in the plain path, and nothing [B, T, V] is kept for the backward pass. Evaluation runs the same
scan without gradients. A C that does not divide T pads the last chunk with weight-0 positions;
a C over T is T.
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from efficiency.model.transformer import LogitsHead, head_params

Head = Callable[[dict, jax.Array, jax.Array], jax.Array]  # (head params, x [B, C, D], rng) -> f32


def head_of(model: nn.Module) -> Head:
  """`model`'s logits projection as a function of its head params (`head_params`), hidden
  states and the `quant` RNG stream."""
  head = LogitsHead(model.config, model.quant)
  return lambda params, x_BCD, rng: head.apply({"params": params}, x_BCD, rngs={"quant": rng})


def model_loss_sum(params, model: nn.Module, x_BTD, targets_BT, weights_BT, rng) -> jax.Array:
  """`chunked_loss_sum` of `model` (`model.loss_chunk` positions per chunk) on its hidden states."""
  return chunked_loss_sum(head_of(model), head_params(params, model.config), x_BTD, targets_BT,
                          weights_BT, rng, model.config.loss_chunk)


def model_token_scores(params, model: nn.Module, x_BTD, targets_BT, rng):
  """`token_scores` of `model` on its hidden states."""
  return token_scores(head_of(model), head_params(params, model.config), x_BTD, targets_BT, rng,
                      model.config.loss_chunk)


def _chunks(chunk: int, *arrays_BT):
  """Each [B, T, ...] array as [n, B, C, ...] chunks along T (C = min(chunk, T)), zero-padded to
  n * C positions."""
  t = arrays_BT[0].shape[1]
  chunk = min(chunk, t)
  n = -(-t // chunk)
  out = []
  for a in arrays_BT:
    pad = [(0, 0)] * a.ndim
    pad[1] = (0, n * chunk - t)
    a = jnp.pad(a, pad)
    out.append(jnp.moveaxis(a.reshape(a.shape[0], n, chunk, *a.shape[2:]), 1, 0))
  return out


def _unchunk(a_nBC, t: int):
  """[n, B, C, ...] -> [B, T, ...] (the padding dropped)."""
  a = jnp.moveaxis(a_nBC, 0, 1)
  return a.reshape(a.shape[0], -1, *a.shape[3:])[:, :t]


def _scores(logits_BCV: jax.Array, targets_BC: jax.Array):
  """Each position's cross-entropy (nats), log-sum-exp and whether argmax hits the target."""
  lse_BC = jax.nn.logsumexp(logits_BCV, axis=-1)
  target_logit_BC = jnp.take_along_axis(logits_BCV, targets_BC[..., None], axis=-1)[..., 0]
  correct_BC = (jnp.argmax(logits_BCV, axis=-1) == targets_BC).astype(jnp.float32)
  return lse_BC - target_logit_BC, lse_BC, correct_BC


def token_scores(
    head: Head, params: dict, x_BTD: jax.Array, targets_BT: jax.Array, rng: jax.Array,
    chunk: int, unroll: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """Each target's cross-entropy (nats) and argmax hit (0/1) [B, T], chunk by chunk (no
  gradients kept: evaluation). `unroll` unrolls the scan (same math; for FLOP counts)."""
  x_nBCD, t_nBC = _chunks(chunk, x_BTD, targets_BT)

  def body(_, xs):
    x_BCD, t_BC = xs
    losses_BC, _, correct_BC = _scores(head(params, x_BCD, rng), t_BC)
    return None, (losses_BC, correct_BC)

  _, (losses_nBC, correct_nBC) = jax.lax.scan(body, None, (x_nBCD, t_nBC), unroll=unroll)
  t = x_BTD.shape[1]
  return _unchunk(losses_nBC, t), _unchunk(correct_nBC, t)


def _loss_sum_fwd(head, chunk, unroll, params, x_BTD, targets_BT, weights_BT, rng):
  """The weighted loss sum and its gradients for params and x, chunk by chunk."""
  x_nBCD, t_nBC, w_nBC = _chunks(chunk, x_BTD, targets_BT, weights_BT)

  def body(carry, xs):
    loss_sum, dparams = carry
    x_BCD, t_BC, w_BC = xs
    logits_BCV, pull = jax.vjp(lambda p, x: head(p, x, rng), params, x_BCD)
    losses_BC, lse_BC, _ = _scores(logits_BCV, t_BC)
    probs_BCV = jnp.exp(logits_BCV - lse_BC[..., None])
    onehot_BCV = jax.nn.one_hot(t_BC, logits_BCV.shape[-1], dtype=logits_BCV.dtype)
    dparams_c, dx_BCD = pull((probs_BCV - onehot_BCV) * w_BC[..., None])
    dparams = jax.tree.map(jnp.add, dparams, dparams_c)
    return (loss_sum + jnp.sum(losses_BC * w_BC), dparams), dx_BCD

  init = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
  (loss_sum, dparams), dx_nBCD = jax.lax.scan(
      body, init, (x_nBCD, t_nBC, w_nBC.astype(jnp.float32)), unroll=unroll
  )
  return loss_sum, (dparams, _unchunk(dx_nBCD, x_BTD.shape[1]))


def _loss_sum_bwd(head, chunk, unroll, grads, g):
  dparams, dx_BTD = grads
  scale = lambda a: (g * a).astype(a.dtype)
  return jax.tree.map(scale, dparams), scale(dx_BTD), None, None, None


def _loss_sum(head, chunk, unroll, params, x_BTD, targets_BT, weights_BT, rng):
  losses_BT, _ = token_scores(head, params, x_BTD, targets_BT, rng, chunk, unroll)
  return jnp.sum(losses_BT * weights_BT.astype(jnp.float32))


_loss_sum = jax.custom_vjp(_loss_sum, nondiff_argnums=(0, 1, 2))
_loss_sum.defvjp(_loss_sum_fwd, _loss_sum_bwd)


def chunked_loss_sum(
    head: Head, params: dict, x_BTD: jax.Array, targets_BT: jax.Array, weights_BT: jax.Array,
    rng: jax.Array, chunk: int, unroll: bool = False,
) -> jax.Array:
  """sum(cross_entropy * weights) over [B, T] targets, differentiable in `params` and `x_BTD`
  (not in targets, weights or rng), computed `chunk` positions per row at a time."""
  return _loss_sum(head, chunk, unroll, params, x_BTD, targets_BT, weights_BT, rng)
