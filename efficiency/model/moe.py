"""Mixture of SwiGLU experts with top-k routing, expert capacity and a load-balancing loss.

Routing is per sequence (row) so that the batch can stay sharded: each row's real (non-padding)
tokens pick their top-k experts by router probability; choices take expert slots in priority
order (every token's first choice before any second choice, as in GShard), and an expert takes at
most C = ceil(capacity_factor * T * k / E) of a row's choices. Choices past capacity are dropped
(the token keeps its residual and its other choices) and counted. Gates are the top-k
probabilities renormalized to sum to 1.

Load-balancing loss (Switch Transformer): E * sum_e f_e * P_e with f_e the fraction of routed
choices that went to expert e (before capacity) and P_e the mean router probability of e, over
real tokens. It is 1 for uniform routing and at least 1 whenever P is uniform or f = P.

The layer sows `aux_loss` and `dropped` (choices dropped) into the `moe` collection.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from efficiency.model.layers import Projection


def capacity(cfg: ml_collections.ConfigDict, seq_len: int) -> int:
  """Slots per expert per row."""
  moe = cfg.moe
  return max(1, math.ceil(moe.capacity_factor * seq_len * moe.top_k / moe.num_experts))


def route(
    probs_BTE: jnp.ndarray, real_BT: jnp.ndarray, top_k: int, slots: int
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Top-k routing with capacity.

  Returns combine weights [B, T, E, C] (gate where a choice got slot c of expert e, else 0), the
  boolean dispatch mask of the same shape, the number of choices dropped, and the aux loss.
  """
  e = probs_BTE.shape[-1]
  gates_BTK, experts_BTK = jax.lax.top_k(probs_BTE, top_k)
  gates_BTK = gates_BTK / jnp.sum(gates_BTK, axis=-1, keepdims=True)
  choice_BTKE = jax.nn.one_hot(experts_BTK, e, dtype=jnp.int32) * real_BT[:, :, None, None]
  # Slot of each choice in its expert: count earlier choices in priority order (k, then t).
  b, t = real_BT.shape
  ordered_BXE = choice_BTKE.transpose(0, 2, 1, 3).reshape(b, top_k * t, e)
  slot_BXE = jnp.cumsum(ordered_BXE, axis=1) - 1
  slot_BTKE = slot_BXE.reshape(b, top_k, t, e).transpose(0, 2, 1, 3)
  kept_BTKE = (choice_BTKE > 0) & (slot_BTKE < slots)
  dropped = jnp.sum(choice_BTKE) - jnp.sum(kept_BTKE)
  dispatch_BTKEC = kept_BTKE[..., None] & (
      slot_BTKE[..., None] == jnp.arange(slots)[None, None, None, None]
  )
  dispatch_BTEC = jnp.any(dispatch_BTKEC, axis=2)
  combine_BTEC = jnp.einsum("btkec,btk->btec", dispatch_BTKEC.astype(jnp.float32), gates_BTK)

  real = jnp.maximum(jnp.sum(real_BT), 1)
  fraction_E = jnp.sum(choice_BTKE, axis=(0, 1, 2)) / (real * top_k)
  mean_prob_E = jnp.sum(probs_BTE * real_BT[..., None], axis=(0, 1)) / real
  aux_loss = e * jnp.sum(fraction_E * mean_prob_E)
  return combine_BTEC, dispatch_BTEC, dropped, aux_loss


class MoE(nn.Module):
  """`model.moe.num_experts` SwiGLU experts of width d_ff, `top_k` per token."""

  config: ml_collections.FrozenConfigDict
  quant: ml_collections.FrozenConfigDict | None = None

  @nn.compact
  def __call__(self, x_BTD: jnp.ndarray, segment_ids_BT: jnp.ndarray) -> jnp.ndarray:
    cfg = self.config
    d, f, e = cfg.d_model, cfg.d_ff, cfg.moe.num_experts
    kw = dict(
        init_std=cfg.init_std, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
        quant=self.quant,
    )
    logits_BTE = Projection("btd,de->bte", (d, e), ("embed", None), name="router", **kw)(x_BTD)
    probs_BTE = jax.nn.softmax(logits_BTE.astype(jnp.float32), axis=-1)
    real_BT = (segment_ids_BT != 0).astype(jnp.int32)
    combine_BTEC, dispatch_BTEC, dropped, aux_loss = route(
        probs_BTE, real_BT, cfg.moe.top_k, capacity(cfg, x_BTD.shape[1])
    )
    self.sow("moe", "aux_loss", aux_loss)
    self.sow("moe", "dropped", dropped)

    x_BECD = jnp.einsum("btec,btd->becd", dispatch_BTEC.astype(x_BTD.dtype), x_BTD)
    x_BECD = nn.with_logical_constraint(
        x_BECD, ("activation_batch_no_expert", "activation_expert", None, "activation_embed")
    )
    up = lambda name: Projection(
        "becd,edf->becf", (e, d, f), ("expert", "embed", "mlp"), name=name, **kw
    )(x_BECD)
    h_BECF = nn.silu(up("gate")) * up("up")
    y_BECD = Projection(
        "becf,efd->becd", (e, f, d), ("expert", "mlp", "embed"), name="down", **kw
    )(h_BECF)
    return jnp.einsum("btec,becd->btd", combine_BTEC.astype(y_BECD.dtype), y_BECD)

  @staticmethod
  def matmul_params(cfg: ml_collections.ConfigDict) -> int:
    """Active weights per token: the router (d E) and top_k experts' SwiGLU (3 d d_ff each)."""
    return cfg.d_model * cfg.moe.num_experts + cfg.moe.top_k * 3 * cfg.d_model * cfg.d_ff
