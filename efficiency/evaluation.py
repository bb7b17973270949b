"""The one evaluator: mean loss (nats per token), next-token accuracy and bits per UTF-8 byte over
fixed batches, and per-row mean losses (reference scoring). The train loop, quantized export,
the reference model of data filters and curricula, and the efficiency benchmark all use it.

A batch holds `inputs`, `targets`, `segment_ids`, `positions` and `weights` [B, T] (see
`data.packing`); only targets with weight > 0 count.
"""

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from efficiency.train.loss import model_token_scores
from efficiency.train.step import Batch, forward, loss_chunk

Sums = dict[str, jax.Array]


def token_losses(params, batch: Batch, model: nn.Module) -> tuple[jax.Array, ...]:
  """Each target's cross-entropy (nats), whether the argmax prediction hits it (0/1) and its
  weight [B, T]; chunk by chunk (efficiency.train.loss) with `model.loss_chunk`."""
  rng = jax.random.PRNGKey(0)
  weights_BT = batch["weights"].astype(jnp.float32)
  if loss_chunk(model):
    x_BTD, _ = forward(params, batch, model, rng, hidden=True)
    losses_BT, correct_BT = model_token_scores(params, model, x_BTD, batch["targets"],
                                               jax.random.split(rng)[1])
    return losses_BT, correct_BT, weights_BT
  logits_BTV, _ = forward(params, batch, model, rng)
  losses_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, batch["targets"])
  correct_BT = (jnp.argmax(logits_BTV, axis=-1) == batch["targets"]).astype(jnp.float32)
  return losses_BT, correct_BT, weights_BT


def batch_sums(
    params, batch: Batch, model: nn.Module, token_bytes_V: jax.Array | None = None
) -> Sums:
  """Summed target losses, correct argmax predictions, real targets and (given each token's
  UTF-8 byte count) target bytes of one batch."""
  losses_BT, correct_BT, weights_BT = token_losses(params, batch, model)
  sums = {
      "loss_sum": jnp.sum(losses_BT * weights_BT),
      "weight_sum": jnp.sum(weights_BT),
      "correct_sum": jnp.sum(correct_BT * weights_BT),
  }
  if token_bytes_V is not None:
    sums["byte_sum"] = jnp.sum(token_bytes_V[batch["targets"]] * batch["weights"])
  return sums


def pooled(
    results: dict[str, dict[str, float]],
    batches: dict[str, Sequence[Batch]],
    token_bytes_V: np.ndarray,
) -> dict[str, float]:
  """eval_loss and eval_bpb of all groups' batches together, from each group's results and its
  (host) batches: losses weighted by each group's real targets, bits over all their bytes.
  Accuracy likewise."""
  loss_sum = byte_sum = weight_sum = correct_sum = 0.0
  for name, result in results.items():
    weights = sum(float(np.sum(b["weights"])) for b in batches[name])
    nbytes = sum(float(np.sum(token_bytes_V[b["targets"]] * b["weights"])) for b in batches[name])
    loss_sum += result["eval_loss"] * weights
    correct_sum += result["accuracy"] * weights
    weight_sum += weights
    byte_sum += nbytes
  return {
      "eval_loss": loss_sum / max(weight_sum, 1.0),
      "accuracy": correct_sum / max(weight_sum, 1.0),
      "eval_bpb": loss_sum / math.log(2) / max(byte_sum, 1.0),
  }


def summarize(totals: Sums) -> dict[str, float]:
  """eval_loss, accuracy and (with byte counts) eval_bpb from summed totals."""
  totals = jax.device_get(totals)
  weight = max(totals["weight_sum"], 1.0)
  result = {
      "eval_loss": float(totals["loss_sum"] / weight),
      "accuracy": float(totals["correct_sum"] / weight),
  }
  if "byte_sum" in totals:
    result["eval_bpb"] = float(totals["loss_sum"] / math.log(2) / max(totals["byte_sum"], 1.0))
  return result


class Evaluator:
  """One model's jitted evaluation.

  `params_of` maps what the caller holds (parameters, or a train state) to the parameters the
  model applies, inside the jitted function; `in_shardings` places (that, batch).
  """

  def __init__(
      self,
      model: nn.Module,
      token_bytes_V: np.ndarray | None = None,
      params_of: Callable | None = None,
      in_shardings=None,
  ):
    token_bytes = None if token_bytes_V is None else jnp.asarray(token_bytes_V, jnp.float32)
    params_of = params_of or (lambda params: params)
    sums = lambda held, batch: batch_sums(params_of(held), batch, model, token_bytes)
    self._sums = jax.jit(sums, in_shardings=in_shardings)
    self._rows = jax.jit(lambda held, batch: row_losses(params_of(held), batch, model))

  def __call__(self, held, batches: Sequence[Batch], progress: bool = False) -> dict[str, float]:
    """eval_loss, accuracy and eval_bpb (given byte counts) over `batches`."""
    totals = None
    for batch in tqdm(batches, desc="eval", unit="batch", leave=False, disable=not progress):
      sums = self._sums(held, batch)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    return summarize(totals)

  def row_losses(self, held, batch: Batch) -> np.ndarray:
    """float32[B]: each row's mean target loss."""
    return np.asarray(self._rows(held, batch))


def row_losses(params, batch: Batch, model: nn.Module) -> jax.Array:
  """[B]: each row's mean loss over its real targets (0 for a row without any)."""
  losses_BT, _, weights_BT = token_losses(params, batch, model)
  return jnp.sum(losses_BT * weights_BT, -1) / jnp.maximum(jnp.sum(weights_BT, -1), 1)
