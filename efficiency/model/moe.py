"""Mixture of SwiGLU experts with top-k routing and a load-balancing loss; two dispatches.

Routing (`model.moe.router`): `softmax_topk` takes each real token's top-k experts by router
probability, gates the top-k probabilities renormalized to sum to 1 (`model.moe.renormalize`,
else the raw probabilities); `topk_softmax` takes the top-k router logits and gates their softmax
(Mixtral). Without bias balancing the two choose the same experts and, renormalized, the same
gates; they differ in where the balancing bias enters (probabilities or logits).

Auxiliary-loss-free balancing (DeepSeek-V3, `model.moe.bias_rate` > 0): a per-expert bias,
added to the scores for choosing experts only (never to the gates), lives outside the gradient
as the parameter `balance/bias` that gets no gradient (and no weight decay); after each optimizer
step `rebalance` moves it by bias_rate * sign(mean load - load) (DeepSeek-V3).

Dispatch (`model.moe.dispatch`):
- `dropless`: each token's k choices are sorted by expert, the expert MLPs run as grouped
  matmuls over the sorted tokens (`model.moe.grouped_matmul`: `jax.lax.ragged_dot`, or the exact
  `tiled_matmul` that `auto` picks on CPU), and the results are unsorted and combined with the
  gates. No choice is dropped; memory and FLOPs are linear in the tokens. Over a mesh it
  runs under `jax.shard_map` on each device's own rows; with `mesh.expert` > 1 each device holds
  E / expert experts, gathers its expert group's tokens, computes its experts' share and
  reduce-scatters the results back (see `_dropless_shard`; a fixed-size all-to-all would need
  buffers as large as the gathered tokens to stay dropless, a ragged all-to-all is the next step
  on TPU and GPU).
- `capacity` (GShard): per row a one-hot dispatch tensor [B, T, E, C] with
  C = ceil(capacity_factor * T * k / E) slots per expert; choices take slots in priority order
  (every token's first choice before any second choice) and choices past capacity are dropped
  (the token keeps its residual and its other choices) and counted. Memory grows with T squared.

Load-balancing loss (Switch Transformer): E * sum_e f_e * P_e with f_e the fraction of routed
choices that went to expert e (before capacity) and P_e the mean router probability of e, over
real tokens. It is 1 for uniform routing and at least 1 whenever P is uniform or f = P.

The layer sows `aux_loss`, `dropped` (choices dropped; 0 for dropless) and `load` (each expert's
fraction of the choices) into the `moe` collection.
"""

import math
from collections.abc import Callable
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import PartitionSpec as P

from efficiency.model.layers import Projection, SwiGLU
from efficiency.sharding.mesh import BATCH_AXES
from efficiency.sharding.target import current_mesh, current_platform

ROUTERS = ("softmax_topk", "topk_softmax")
DISPATCHES = ("dropless", "capacity")
BIAS = ("balance", "bias")  # where the balancing bias [E] lives (no weight decay on a "bias")


def capacity(cfg: ml_collections.ConfigDict, seq_len: int) -> int:
  """Slots per expert per row (capacity dispatch)."""
  moe = cfg.moe
  return max(1, math.ceil(moe.capacity_factor * seq_len * moe.top_k / moe.num_experts))


def choose(
    logits_BTE: jnp.ndarray, moe: ml_collections.ConfigDict, bias_E: jnp.ndarray | None = None
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Router probabilities [B, T, E] and each token's gates and experts [B, T, k]."""
  logits_BTE = logits_BTE.astype(jnp.float32)
  probs_BTE = jax.nn.softmax(logits_BTE, axis=-1)
  bias_E = jnp.zeros(logits_BTE.shape[-1]) if bias_E is None else jax.lax.stop_gradient(bias_E)
  if moe.router == "topk_softmax":
    _, experts_BTK = jax.lax.top_k(logits_BTE + bias_E, moe.top_k)
    gates_BTK = jax.nn.softmax(jnp.take_along_axis(logits_BTE, experts_BTK, axis=-1), axis=-1)
    return probs_BTE, gates_BTK, experts_BTK
  _, experts_BTK = jax.lax.top_k(probs_BTE + bias_E, moe.top_k)
  gates_BTK = jnp.take_along_axis(probs_BTE, experts_BTK, axis=-1)
  if moe.renormalize:
    gates_BTK = gates_BTK / jnp.sum(gates_BTK, axis=-1, keepdims=True)
  return probs_BTE, gates_BTK, experts_BTK


def balance(
    probs_BTE: jnp.ndarray, experts_BTK: jnp.ndarray, real_BT: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Each expert's fraction of the real tokens' choices [E], and the load-balancing loss."""
  e, k = probs_BTE.shape[-1], experts_BTK.shape[-1]
  real = jnp.maximum(jnp.sum(real_BT), 1)
  choice_E = jnp.sum(jax.nn.one_hot(experts_BTK, e) * real_BT[..., None, None], axis=(0, 1, 2))
  load_E = choice_E / (real * k)
  mean_prob_E = jnp.sum(probs_BTE * real_BT[..., None], axis=(0, 1)) / real
  return load_E, e * jnp.sum(load_E * mean_prob_E)


def update_bias(bias_E: jnp.ndarray, load_E: jnp.ndarray, rate: float) -> jnp.ndarray:
  """DeepSeek-V3's balancing step: raise the bias of underloaded experts, lower overloaded."""
  return bias_E + rate * jnp.sign(jnp.mean(load_E) - load_E)


def rebalance(params: dict, load_LE: jnp.ndarray, rate: float) -> dict:
  """`params` with every MoE layer's balancing bias moved by `update_bias` on its load. `load_LE`
  holds the layers' sown loads in parameter order (rows may be scaled: only signs count)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  out, row = [], 0
  for path, leaf in leaves:
    if tuple(getattr(k, "key", None) for k in path[-2:]) == BIAS:
      rows = leaf.size // leaf.shape[-1]
      load = load_LE[row : row + rows].reshape(leaf.shape)
      leaf, row = update_bias(leaf, load / jnp.sum(load, -1, keepdims=True), rate), row + rows
    out.append(leaf)
  return jax.tree_util.tree_unflatten(treedef, out)


def load_max(load_LE: jnp.ndarray) -> jnp.ndarray:
  """The busiest expert's share of the choices times E, averaged over layers: 1 when balanced,
  E when one expert takes everything."""
  share_LE = load_LE / jnp.maximum(jnp.sum(load_LE, -1, keepdims=True), 1e-9)
  return jnp.mean(jnp.max(share_LE, -1)) * load_LE.shape[-1]


def route(
    gates_BTK: jnp.ndarray, experts_BTK: jnp.ndarray, real_BT: jnp.ndarray, e: int, slots: int
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Capacity routing: combine weights [B, T, E, C] (gate where a choice got slot c of expert e,
  else 0), the boolean dispatch mask of the same shape, and the number of choices dropped."""
  b, t, top_k = experts_BTK.shape
  choice_BTKE = jax.nn.one_hot(experts_BTK, e, dtype=jnp.int32) * real_BT[:, :, None, None]
  # Slot of each choice in its expert: count earlier choices in priority order (k, then t).
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
  return combine_BTEC, dispatch_BTEC, dropped


TILE_ROWS = 128  # tiled_matmul's rows per tile


def tiled_matmul(x_MK: jnp.ndarray, w_EKN: jnp.ndarray, sizes_E: jnp.ndarray) -> jnp.ndarray:
  """`jax.lax.ragged_dot` computed as whole tiles: each group's rows are padded to a multiple of
  the tile (TILE_ROWS), every tile takes its group's weight, and one batched matmul runs
  over the tiles. Exact, with FLOPs and memory linear in the rows (XLA:CPU lowers ragged_dot to
  a masked dense product per group, E times the work). Rows past sum(sizes_E) give 0."""
  m, k = x_MK.shape
  e = w_EKN.shape[0]
  tile = TILE_ROWS
  tiles = -(-(m + e * (tile - 1)) // tile)
  padded_E = -(-sizes_E // tile) * tile
  start_E = jnp.cumsum(sizes_E) - sizes_E
  padded_start_E = jnp.cumsum(padded_E) - padded_E
  row_M = jnp.arange(m)
  group_M = jnp.searchsorted(jnp.cumsum(sizes_E), row_M, side="right")
  in_group_M = group_M < e
  group_M = jnp.minimum(group_M, e - 1)
  slot_M = jnp.where(in_group_M, padded_start_E[group_M] + row_M - start_E[group_M], tiles * tile)
  x_PK = jnp.zeros((tiles * tile, k), x_MK.dtype).at[slot_M].set(x_MK, mode="drop")
  tile_group_T = jnp.searchsorted(jnp.cumsum(padded_E), jnp.arange(tiles) * tile, side="right")
  w_TKN = w_EKN[jnp.minimum(tile_group_T, e - 1)]
  y_TBN = jnp.einsum("tbk,tkn->tbn", x_PK.reshape(tiles, tile, k), w_TKN)
  y_MN = y_TBN.reshape(tiles * tile, -1)[jnp.minimum(slot_M, tiles * tile - 1)]
  return jnp.where(in_group_M[:, None], y_MN, 0)


GROUPED_MATMULS = {"ragged_dot": jax.lax.ragged_dot, "tiles": tiled_matmul}


def grouped_matmul(name: str) -> Callable:
  """The grouped matmul `model.moe.grouped_matmul` names; `auto`: tiles when tracing for CPU,
  else ragged_dot (which XLA lowers to grouped kernels for TPU and GPU)."""
  if name == "auto":
    name = "tiles" if current_platform() == "cpu" else "ragged_dot"
  return GROUPED_MATMULS[name]


def _dropless_shard(
    x_ND: jnp.ndarray, experts_NK: jnp.ndarray, gates_NK: jnp.ndarray,
    gate_EDF: jnp.ndarray, up_EDF: jnp.ndarray, down_EFD: jnp.ndarray, expert_axis: str | None,
    matmul: Callable = jax.lax.ragged_dot,
) -> jnp.ndarray:
  """One device's dropless MoE: its N tokens' k choices (expert -1: none) sorted by expert,
  three grouped matmuls, unsorted and gate-weighted. With `expert_axis` the device holds E_local
  experts: it gathers its expert group's tokens, computes the choices of its own experts (the
  others sort past the last group and stay zero) and reduce-scatters the sums back."""
  e_local = gate_EDF.shape[0]
  first = 0
  if expert_axis is not None:
    gather = partial(jax.lax.all_gather, axis_name=expert_axis, axis=0, tiled=True)
    x_ND, experts_NK, gates_NK = gather(x_ND), gather(experts_NK), gather(gates_NK)
    first = jax.lax.axis_index(expert_axis) * e_local
  n, k = experts_NK.shape
  local_NK = experts_NK - first
  mine_NK = (experts_NK >= 0) & (local_NK >= 0) & (local_NK < e_local)
  key_M = jnp.where(mine_NK, local_NK, e_local).reshape(n * k)
  order_M = jnp.argsort(key_M, stable=True)
  sizes_E = jnp.bincount(key_M, length=e_local + 1)[:e_local].astype(jnp.int32)
  xs_MD = x_ND[order_M // k]
  h_MF = nn.silu(matmul(xs_MD, gate_EDF, sizes_E)) * matmul(xs_MD, up_EDF, sizes_E)
  ys_MD = matmul(h_MF, down_EFD, sizes_E)
  y_NKD = ys_MD[jnp.argsort(order_M)].reshape(n, k, -1)
  weights_NK = jnp.where(mine_NK, gates_NK, 0.0).astype(y_NKD.dtype)
  y_ND = jnp.einsum("nkd,nk->nd", y_NKD, weights_NK)
  if expert_axis is not None:
    y_ND = jax.lax.psum_scatter(y_ND, expert_axis, scatter_dimension=0, tiled=True)
  return y_ND


def dropless(
    x_BTD: jnp.ndarray, experts_BTK: jnp.ndarray, gates_BTK: jnp.ndarray,
    gate_EDF: jnp.ndarray, up_EDF: jnp.ndarray, down_EFD: jnp.ndarray,
    matmul: Callable = jax.lax.ragged_dot,
) -> jnp.ndarray:
  """Dropless MoE over [B, T] tokens (expert -1 marks a choice not taken, e.g. padding). Under a
  mesh whose batch axes split B it runs per device under `shard_map`, with the experts sharded
  over `expert`; otherwise over all tokens at once."""
  b, t, d = x_BTD.shape
  k = experts_BTK.shape[-1]
  mesh = current_mesh()
  batch_axes = tuple(a for a in BATCH_AXES if mesh is not None and mesh.shape[a] > 1)
  shards = math.prod(mesh.shape[a] for a in batch_axes) if batch_axes else 1
  if not batch_axes or b % shards:
    y_ND = _dropless_shard(
        x_BTD.reshape(b * t, d), experts_BTK.reshape(b * t, k), gates_BTK.reshape(b * t, k),
        gate_EDF, up_EDF, down_EFD, None, matmul,
    )
    return y_ND.reshape(b, t, d)
  e = gate_EDF.shape[0]
  expert_axis = "expert" if mesh.shape["expert"] > 1 and e % mesh.shape["expert"] == 0 else None
  weights = P(expert_axis)
  rows = P(batch_axes)
  run = jax.shard_map(
      partial(_dropless_shard, expert_axis=expert_axis, matmul=matmul), mesh=mesh,
      in_specs=(rows, rows, rows, weights, weights, weights), out_specs=rows, check_vma=False,
  )
  flat = lambda a: a.reshape(b * t, *a.shape[2:])
  return run(flat(x_BTD), flat(experts_BTK), flat(gates_BTK), gate_EDF, up_EDF, down_EFD).reshape(
      b, t, d
  )


class _Kernel(nn.Module):
  """One parameter with logical axes: an expert weight [E, ...] initialized like a Projection's
  kernel, or the balancing bias."""

  shape: tuple[int, ...]
  axes: tuple[str | None, ...]
  init_std: float
  param_dtype: jnp.dtype
  init: Callable | None = None  # default: normal(init_std)
  param_name: str = "kernel"

  @nn.compact
  def __call__(self) -> jnp.ndarray:
    init = self.init or nn.initializers.normal(self.init_std)
    boxed = nn.with_logical_partitioning(init, self.axes)
    return self.param(self.param_name, boxed, self.shape, self.param_dtype)


class MoE(nn.Module):
  """`model.moe.num_experts` SwiGLU experts of width d_ff, `top_k` per token, plus
  `model.moe.shared_experts` x d_ff of always-on SwiGLU (the shared expert)."""

  config: ml_collections.FrozenConfigDict
  quant: ml_collections.FrozenConfigDict | None = None

  @nn.compact
  def __call__(self, x_BTD: jnp.ndarray, segment_ids_BT: jnp.ndarray) -> jnp.ndarray:
    cfg = self.config
    moe = cfg.moe
    d, f, e = cfg.d_model, cfg.d_ff, moe.num_experts
    dtype = jnp.dtype(cfg.dtype)
    kw = dict(init_std=cfg.init_std, dtype=dtype, param_dtype=jnp.dtype(cfg.param_dtype),
              quant=self.quant)
    logits_BTE = Projection("btd,de->bte", (d, e), ("embed", None), name="router", **kw)(x_BTD)
    bias_E = None
    if moe.bias_rate:  # a parameter without gradient, moved by `rebalance` after each step
      bias_E = _Kernel((e,), (None,), 0.0, jnp.float32, name=BIAS[0], init=nn.initializers.zeros,
                       param_name=BIAS[1])()
    probs_BTE, gates_BTK, experts_BTK = choose(logits_BTE, moe, bias_E)
    real_BT = (segment_ids_BT != 0).astype(jnp.int32)
    load_E, aux_loss = balance(probs_BTE, experts_BTK, real_BT)
    self.sow("moe", "aux_loss", aux_loss)
    self.sow("moe", "load", load_E)
    if moe.dispatch == "dropless":
      y_BTD = self._dropless(x_BTD, jnp.where(real_BT[..., None] > 0, experts_BTK, -1), gates_BTK)
      self.sow("moe", "dropped", jnp.zeros((), jnp.int32))
    else:
      y_BTD = self._capacity(x_BTD, gates_BTK, experts_BTK, real_BT, kw)
    if moe.shared_experts:
      y_BTD = y_BTD + SwiGLU(d, moe.shared_experts * f, cfg.init_std, name="shared",
                             dtype=dtype, param_dtype=kw["param_dtype"], quant=self.quant)(x_BTD)
    return y_BTD

  def _dropless(self, x_BTD, experts_BTK, gates_BTK) -> jnp.ndarray:
    cfg = self.config
    d, f, e = cfg.d_model, cfg.d_ff, cfg.moe.num_experts
    dtype = jnp.dtype(cfg.dtype)
    kernel = lambda name, shape, axes: _Kernel(
        shape, axes, cfg.init_std, jnp.dtype(cfg.param_dtype), name=name
    )().astype(dtype)
    gate_EDF = kernel("gate", (e, d, f), ("expert", "embed", "mlp"))
    up_EDF = kernel("up", (e, d, f), ("expert", "embed", "mlp"))
    down_EFD = kernel("down", (e, f, d), ("expert", "mlp", "embed"))
    return dropless(x_BTD.astype(dtype), experts_BTK, gates_BTK, gate_EDF, up_EDF, down_EFD,
                    grouped_matmul(cfg.moe.grouped_matmul))

  def _capacity(self, x_BTD, gates_BTK, experts_BTK, real_BT, kw) -> jnp.ndarray:
    cfg = self.config
    d, f, e = cfg.d_model, cfg.d_ff, cfg.moe.num_experts
    combine_BTEC, dispatch_BTEC, dropped = route(
        gates_BTK, experts_BTK, real_BT, e, capacity(cfg, x_BTD.shape[1])
    )
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
    """Active weights per token: the router (d E), top_k experts' SwiGLU (3 d d_ff each) and the
    shared expert (3 d d_ff shared_experts)."""
    moe = cfg.moe
    return cfg.d_model * moe.num_experts + (moe.top_k + moe.shared_experts) * 3 * cfg.d_model * (
        cfg.d_ff
    )
