"""Loss, the jit-able train step (with gradient accumulation) and the eval step."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from efficiency.train.state import TrainState

Batch = dict[str, jax.Array]


def summed_loss(params, batch: Batch, model: nn.Module, rng: jax.Array):
  """Sum of token cross-entropies (nats) over real targets, and the number of real targets."""
  logits_BTV = model.apply(
      {"params": params},
      batch["inputs"],
      batch["segment_ids"],
      batch["positions"],
      rngs={"dropout": rng},
  )
  losses_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, batch["targets"])
  weights_BT = batch["weights"].astype(jnp.float32)
  return jnp.sum(losses_BT * weights_BT), jnp.sum(weights_BT)


def _micro_batches(batch: Batch, n: int) -> Batch:
  """[B, T] -> [n, B/n, T]; each micro-batch takes rows evenly from every data shard."""
  return jax.tree.map(lambda x: x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1), batch)


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    grad_accum_steps: int = 1,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on the mean token loss of `batch`, accumulated over micro-batches."""
  rng, step_rng = jax.random.split(state.rng)
  grad_fn = jax.value_and_grad(summed_loss, has_aux=True)

  if grad_accum_steps == 1:
    (loss_sum, weight_sum), grads = grad_fn(state.params, batch, model, step_rng)
  else:

    def accumulate(carry, micro):
      loss_acc, weight_acc, grads_acc, i = carry
      (loss, weight), grads = grad_fn(
          state.params, micro, model, jax.random.fold_in(step_rng, i)
      )
      grads_acc = jax.tree.map(jnp.add, grads_acc, grads)
      return (loss_acc + loss, weight_acc + weight, grads_acc, i + 1), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    init = (jnp.zeros(()), jnp.zeros(()), zeros, jnp.zeros((), jnp.int32))
    (loss_sum, weight_sum, grads, _), _ = jax.lax.scan(
        accumulate, init, _micro_batches(batch, grad_accum_steps)
    )

  denom = jnp.maximum(weight_sum, 1.0)
  grads = jax.tree.map(lambda g: g / denom, grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
      "loss": loss_sum / denom,
      "grad_norm": optax.global_norm(grads),
      "lr": schedule(state.step),
      "tokens": weight_sum,
  }
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
  return new_state, metrics


def eval_step(params, batch: Batch, *, model: nn.Module, token_bytes: jax.Array):
  """Summed loss, real target count and their UTF-8 byte count, for loss and bits per byte."""
  loss_sum, weight_sum = summed_loss(params, batch, model, jax.random.PRNGKey(0))
  byte_sum = jnp.sum(token_bytes[batch["targets"]] * batch["weights"])
  return {"loss_sum": loss_sum, "weight_sum": weight_sum, "byte_sum": byte_sum}
