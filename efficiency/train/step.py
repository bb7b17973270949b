"""The forward pass with its RNG streams, the loss, and the jit-able train step (with gradient
accumulation)."""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from efficiency.model.moe import load_max, rebalance
from efficiency.train.distill import Distillation, kl_sum
from efficiency.train.loss import model_loss_sum
from efficiency.train.state import TrainState

Batch = dict[str, jax.Array]


def forward(
    params, batch: Batch, model: nn.Module, rng: jax.Array, hidden: bool = False
) -> tuple[jax.Array, dict]:
  """Logits [B, T, V] of a batch (with `hidden`, the final hidden states [B, T, D] instead) and
  the collections the model sows (`moe`), with the RNG streams a forward pass may use drawn
  from `rng`."""
  return model.apply(
      {"params": params},
      batch["inputs"],
      batch["segment_ids"],
      batch["positions"],
      hidden=hidden,
      rngs=_rngs(rng),
      mutable=["moe"],
  )


def loss_chunk(model: nn.Module) -> int:
  """Positions per row of each chunk of the chunked loss (`model.loss_chunk`); 0: plain."""
  return model.config.get("loss_chunk", 0)


def summed_loss(
    params, batch: Batch, model: nn.Module, rng: jax.Array,
    distill: Distillation | None = None, teacher_params=None,
):
  """The objective summed over real targets, and its parts: `loss_sum` (token cross-entropies,
  nats), `weight_sum` (real targets), with `distill` `distill_kl_sum` (see
  `efficiency.train.distill`) and, for MoE models, `moe_aux_loss_sum` (the load-balancing loss
  averaged over layers, times weight_sum), `moe_dropped` (routing choices dropped over
  capacity, all layers) and `moe_load` (each layer's expert loads, [layers, E]). The objective
  is loss_sum, or with `distill` (1 - weight) * loss_sum + weight * distill_kl_sum; it adds
  aux_loss_weight * moe_aux_loss_sum. With `model.loss_chunk`, loss_sum comes from
  `efficiency.train.loss` (no [B, T, V] logits)."""
  weights_BT = batch["weights"].astype(jnp.float32)
  if loss_chunk(model):  # config refuses distill with it
    x_BTD, aux = forward(params, batch, model, rng, hidden=True)
    loss_sum = model_loss_sum(params, model, x_BTD, batch["targets"], weights_BT,
                              _rngs(rng)["quant"])
  else:
    logits_BTV, aux = forward(params, batch, model, rng)
    losses_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, batch["targets"])
    loss_sum = jnp.sum(losses_BT * weights_BT)
  stats = {"loss_sum": loss_sum, "weight_sum": jnp.sum(weights_BT)}
  objective = stats["loss_sum"]
  if distill is not None:
    teacher_BTV, _ = forward(teacher_params, batch, distill.model, jax.random.fold_in(rng, 1))
    stats["distill_kl_sum"] = kl_sum(logits_BTV, teacher_BTV, weights_BT, distill.temperature)
    objective = (1 - distill.weight) * objective + distill.weight * stats["distill_kl_sum"]
  if "moe" in aux:
    aux_loss = jnp.mean(_sown(aux["moe"], "aux_loss"))
    stats["moe_aux_loss_sum"] = aux_loss * stats["weight_sum"]
    stats["moe_dropped"] = jnp.sum(_sown(aux["moe"], "dropped"))
    stats["moe_load"] = _sown(aux["moe"], "load").reshape(-1, model.config.moe.num_experts)
    objective += model.config.moe.aux_loss_weight * stats["moe_aux_loss_sum"]
  return objective, stats


def _rngs(rng: jax.Array) -> dict[str, jax.Array]:
  """The RNG streams a forward pass may use: dropout, and stochastic rounding for quantization."""
  dropout_rng, quant_rng = jax.random.split(rng)
  return {"dropout": dropout_rng, "quant": quant_rng}


def _sown(collection, name: str) -> jax.Array:
  """Every value sown under `name` in a collection, concatenated (one per layer)."""
  leaves = jax.tree_util.tree_flatten_with_path(collection)[0]
  return jnp.concatenate([
      jnp.ravel(leaf) for path, leaf in leaves
      if any(getattr(key, "key", None) == name for key in path)
  ])


def _micro_batches(batch: Batch, n: int) -> Batch:
  """[B, T] -> [n, B/n, T]; each micro-batch takes rows evenly from every data shard."""
  return jax.tree.map(lambda x: x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1), batch)


def train_step(
    state: TrainState,
    batch: Batch,
    teacher_params=None,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    grad_accum_steps: int = 1,
    combine: Callable | None = None,
    distill: Distillation | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on the mean token loss of `batch`, accumulated over micro-batches.

  With `combine` (a PEFT method's `apply_params`), gradients flow to `state.params` (the
  trainable tree) through `combine(state.params, state.frozen)`, the params `model` applies; the
  frozen tree passes through the step unchanged. With `distill`, `teacher_params` are the
  teacher's (forward only).
  """
  rng, step_rng = jax.random.split(state.rng)
  frozen = getattr(state, "frozen", None)
  params_of = (lambda p: p) if combine is None else (lambda p: combine(p, frozen))
  loss_fn = lambda p, b, m, r: summed_loss(params_of(p), b, m, r, distill, teacher_params)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  if grad_accum_steps == 1:
    (_, stats), grads = grad_fn(state.params, batch, model, step_rng)
  else:

    def accumulate(carry, micro):
      stats_acc, grads_acc, i = carry
      (_, stats), grads = grad_fn(state.params, micro, model, jax.random.fold_in(step_rng, i))
      grads_acc = jax.tree.map(jnp.add, grads_acc, grads)
      return (jax.tree.map(jnp.add, stats_acc, stats), grads_acc, i + 1), None

    micro_batches = _micro_batches(batch, grad_accum_steps)
    first = jax.tree.map(lambda x: x[0], micro_batches)
    stats_shape = jax.eval_shape(lambda: grad_fn(state.params, first, model, step_rng)[0][1])
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    init = (jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), stats_shape), zeros,
            jnp.zeros((), jnp.int32))
    (stats, grads, _), _ = jax.lax.scan(accumulate, init, micro_batches)

  weight_sum = stats["weight_sum"]
  denom = jnp.maximum(weight_sum, 1.0)
  grads = jax.tree.map(lambda g: g / denom, grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
      "loss": stats["loss_sum"] / denom,
      "grad_norm": optax.global_norm(grads),
      "lr": schedule(state.step),
      "tokens": weight_sum,
  }
  if "distill_kl_sum" in stats:
    metrics["distill_kl"] = stats["distill_kl_sum"] / denom
  if isinstance(opt_state, optax.ApplyIfFiniteState):  # on_nonfinite=skip
    metrics["skipped_steps"] = opt_state.total_notfinite
    metrics["consecutive_skips"] = opt_state.notfinite_count
  if "moe_aux_loss_sum" in stats:
    metrics["moe_aux_loss"] = stats["moe_aux_loss_sum"] / denom
    metrics["moe_dropped"] = stats["moe_dropped"]
    metrics["moe_load_max"] = load_max(stats["moe_load"])
    if model.config.moe.bias_rate:  # the trainable tree's balancing biases (none if frozen)
      params = rebalance(params, stats["moe_load"], model.config.moe.bias_rate)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
  return new_state, metrics
