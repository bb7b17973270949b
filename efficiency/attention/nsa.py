"""Native Sparse Attention (arXiv 2502.11089): compressed, selected and sliding-window branches
mixed per head by sigmoid gates from a small MLP on the input.

Sizes come from `model.nsa`: compression block `block_size` (l) with `stride` (d), selection block
`select_size` (l'), `top_n` selected blocks and the sliding `window` (w). Every branch has its own
keys and values and shares the queries.

- compressed: each block of l keys starting every d tokens is mapped to one key (and value) by a
  learned MLP over the block's keys plus an intra-block position embedding. A query sees a block
  only once the whole block is in its past and inside its own document.
- selected: block importance = the compressed-branch attention probabilities summed over the
  heads of a GQA group (so the group shares its choice) and over the compression blocks that
  overlap each selection block. Each query attends to the tokens of its top-n blocks (its own block
  and its document's first block are always chosen), gathered per query: [T, n l'] scores.
- window: banded local attention over the last w tokens ([T / w, w, 2w] scores).

No branch forms a T x T score matrix. Masks inside every branch keep causality and documents:
nothing crosses a document boundary. Blocks are aligned to the packed row, so a block that
straddles a boundary is unused by the compressed branch, and a packed document's blocks need not
fall where they would for the document alone.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from efficiency.attention.cache import CacheEntry, cached_attention, write
from efficiency.attention.dot_product import NEG_INF
from efficiency.attention.gqa import head_dim, kv_projection, projection_kwargs, query_projection
from efficiency.attention.windowed import windowed_attention
from efficiency.model.layers import Projection
from efficiency.position import get_position

BRANCHES = ("compressed", "selected", "window")


def num_compressed_blocks(seq_len: int, block_size: int, stride: int) -> int:
  return max(0, (seq_len - block_size) // stride + 1)


def document_starts(segment_ids_BT: jnp.ndarray) -> jnp.ndarray:
  """Index of the first token of each token's document (packed documents are contiguous)."""
  t = segment_ids_BT.shape[1]
  new_BT = jnp.concatenate(
      [jnp.ones_like(segment_ids_BT[:, :1], bool), segment_ids_BT[:, 1:] != segment_ids_BT[:, :-1]],
      axis=1,
  )
  return jax.lax.cummax(jnp.where(new_BT, jnp.arange(t), 0), axis=1)


def masked_softmax(scores: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """Softmax over the last axis where `mask`; rows with nothing allowed give zeros."""
  probs = jax.nn.softmax(jnp.where(mask, scores, NEG_INF), axis=-1)
  return jnp.where(mask, probs, 0.0)


def gather_tokens(x_BTK: jnp.ndarray, index_BKTS: jnp.ndarray, pad: int) -> jnp.ndarray:
  """Per KV head k and query t, the tokens index_BKTS[:, k, t] of x [B, T, K or 1, ...]
  (zero-padded by `pad` tokens at the end): [B, K, T, S, ...]."""
  b, k, t, s = index_BKTS.shape
  x_BKP = jnp.moveaxis(jnp.pad(x_BTK, [(0, 0), (0, pad)] + [(0, 0)] * (x_BTK.ndim - 2)), 2, 1)
  x_BKP = jnp.broadcast_to(x_BKP, (b, k, *x_BKP.shape[2:]))
  index = index_BKTS.reshape(b, k, t * s, *([1] * (x_BKP.ndim - 3)))
  gathered = jnp.take_along_axis(x_BKP, index, axis=2)
  return gathered.reshape(b, k, t, s, *x_BKP.shape[3:])


def group_heads(bias_XN1S: jnp.ndarray, k: int) -> jnp.ndarray:
  """[B, K, T, N, 1, S] bias for per-group keys -> [B, K, G, T, S], keeping each group's heads."""
  b, _, t, n, _, s = bias_XN1S.shape
  bias_BKTJGS = bias_XN1S.reshape(b, k, t, k, n // k, s)
  return jnp.einsum("bktjgs,kj->bkgts", bias_BKTJGS, jnp.eye(k, dtype=bias_XN1S.dtype))


class NativeSparseAttention(nn.Module):
  """NSA over GQA-grouped heads; see the module docstring."""

  config: ml_collections.FrozenConfigDict

  @nn.compact
  def __call__(
      self,
      x_BTD: jnp.ndarray,
      segment_ids_BT: jnp.ndarray,
      positions_BT: jnp.ndarray,
      cache: dict[str, jnp.ndarray] | None = None,
  ) -> jnp.ndarray | tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """With a `cache` (the entries of `kv_cache_spec`) it decodes (`attend_cached`) and returns
    (y_BTD, new cache)."""
    cfg = self.config
    d, n, h = cfg.d_model, cfg.num_heads, head_dim(cfg)
    q_BTNH = query_projection(cfg)(x_BTD)
    kv = lambda name: kv_projection(cfg, name)(x_BTD)
    position = get_position(cfg.position)(cfg)
    bias = position.score_bias()
    q_BTNH = position.rotate(q_BTNH, positions_BT)
    keys = {b: position.rotate(kv(f"{b}_key"), positions_BT) for b in BRANCHES}
    values = {b: kv(f"{b}_value") for b in BRANCHES}

    if cache is None:
      cmp_BTNH, importance_BKTM = self.compressed(
          q_BTNH, keys["compressed"], values["compressed"], segment_ids_BT, positions_BT, bias
      )
      sel_BTNH = self.selected(
          q_BTNH, keys["selected"], values["selected"], segment_ids_BT, positions_BT, bias,
          importance_BKTM,
      )
      win_BTNH = windowed_attention(
          q_BTNH, keys["window"], values["window"], segment_ids_BT, positions_BT, cfg.nsa.window,
          bias,
      )
    else:
      cache, (cmp_BTNH, sel_BTNH, win_BTNH) = self.attend_cached(
          q_BTNH, keys, values, positions_BT, bias, cache
      )
    hidden = Projection(
        "btd,df->btf", (d, self.gate_hidden(cfg)), ("embed", "mlp"), name="gate_hidden",
        **projection_kwargs(cfg),
    )(x_BTD)
    gates_BTNG = nn.sigmoid(Projection(
        "btf,fng->btng", (self.gate_hidden(cfg), n, 3), ("mlp", "heads", None), name="gate",
        **projection_kwargs(cfg),
    )(nn.silu(hidden)).astype(jnp.float32))
    branches_BTNHG = jnp.stack([cmp_BTNH, sel_BTNH, win_BTNH], axis=-1).astype(jnp.float32)
    out_BTNH = jnp.einsum("btnhg,btng->btnh", branches_BTNHG, gates_BTNG).astype(q_BTNH.dtype)
    y_BTD = Projection(
        "btnh,nhd->btd", (n, h, d), ("heads", "head_dim", "embed"), name="out",
        **projection_kwargs(cfg),
    )(out_BTNH)
    return y_BTD if cache is None else (y_BTD, cache)

  @staticmethod
  def gate_hidden(cfg: ml_collections.ConfigDict) -> int:
    """Width of the gate MLP's hidden layer."""
    return max(cfg.d_model // 4, 1)

  def compress(self, x_BTKH: jnp.ndarray, name: str) -> jnp.ndarray:
    """Blocks of l tokens every d tokens -> one vector per block and KV head: [B, M, K, H]."""
    nsa = self.config.nsa
    t = x_BTKH.shape[1]
    m = num_compressed_blocks(t, nsa.block_size, nsa.stride)
    index_ML = np.arange(m)[:, None] * nsa.stride + np.arange(nsa.block_size)[None]
    return self.compress_blocks(x_BTKH[:, index_ML], name)

  def compress_blocks(self, blocks_BMLKH: jnp.ndarray, name: str) -> jnp.ndarray:
    """Blocks [B, M, l, K, H] of raw keys or values -> [B, M, K, H]."""
    cfg, nsa = self.config, self.config.nsa
    b, m, _, k, h = blocks_BMLKH.shape
    block_pos_LH = self.param(
        f"{name}_block_position",
        nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), (None, "head_dim")),
        (nsa.block_size, h),
        jnp.dtype(cfg.param_dtype),
    )
    blocks_BMLKH = blocks_BMLKH + block_pos_LH[:, None].astype(blocks_BMLKH.dtype)
    flat_BMKF = blocks_BMLKH.transpose(0, 1, 3, 2, 4).reshape(b, m, k, nsa.block_size * h)
    kw = projection_kwargs(cfg)
    hidden_BMKH = nn.silu(Projection(
        "bmkf,fh->bmkh", (nsa.block_size * h, h), (None, "head_dim"), name=f"{name}_mlp_in", **kw
    )(flat_BMKF))
    return Projection(
        "bmkh,hj->bmkj", (h, h), ("head_dim", None), name=f"{name}_mlp_out", **kw
    )(hidden_BMKH)

  def compressed(self, q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, positions_BT, bias):
    """Attention to the compressed blocks; also returns the group-summed probabilities
    [B, K, T, M] that rank blocks for selection."""
    nsa = self.config.nsa
    b, t, n, h = q_BTNH.shape
    k = k_BTKH.shape[2]
    kc_BMKH, vc_BMKH = self.compress(k_BTKH, "key"), self.compress(v_BTKH, "value")
    m = kc_BMKH.shape[1]
    first_M = np.arange(m) * nsa.stride
    last_M = first_M + nsa.block_size - 1
    seg_first_BM, seg_last_BM = segment_ids_BT[:, first_M], segment_ids_BT[:, last_M]
    mask_BTM = (
        (last_M[None, None, :] <= np.arange(t)[None, :, None])
        & (seg_first_BM[:, None, :] == segment_ids_BT[:, :, None])
        & (seg_last_BM[:, None, :] == segment_ids_BT[:, :, None])
        & (segment_ids_BT[:, :, None] != 0)
    )
    q_BTKGH = q_BTNH.reshape(b, t, k, n // k, h)
    scores_BKGTM = jnp.einsum("btkgh,bmkh->bkgtm", q_BTKGH, kc_BMKH).astype(jnp.float32)
    scores_BKGTM *= h**-0.5
    if bias is not None:
      bias_BNTM = bias(positions_BT, positions_BT[:, last_M])
      scores_BKGTM += bias_BNTM.reshape(b, k, n // k, t, m)
    probs_BKGTM = masked_softmax(scores_BKGTM, mask_BTM[:, None, None])
    out_BTKGH = jnp.einsum("bkgtm,bmkh->btkgh", probs_BKGTM.astype(vc_BMKH.dtype), vc_BMKH)
    return out_BTKGH.reshape(b, t, n, h), probs_BKGTM.sum(axis=2)

  def selected(self, q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, positions_BT, bias, importance_BKTM):
    """Attention to the tokens of each query's top-n selection blocks, chosen per GQA group."""
    nsa = self.config.nsa
    b, t, n, h = q_BTNH.shape
    k = k_BTKH.shape[2]
    ls, m = nsa.select_size, importance_BKTM.shape[-1]
    j = -(-t // ls)
    top_n = min(nsa.top_n, j)
    # overlap_MJ[i, j]: compression block i shares tokens with selection block j.
    first_M = np.arange(m) * nsa.stride
    first_J = np.arange(j) * ls
    overlap_MJ = (first_M[:, None] < first_J[None] + ls) & (
        first_J[None] < first_M[:, None] + nsa.block_size
    )
    importance_BKTJ = importance_BKTM @ overlap_MJ.astype(importance_BKTM.dtype)
    query_T = np.arange(t)
    block_T = query_T // ls
    start_block_BT = document_starts(segment_ids_BT) // ls
    visible_BTJ = (first_J[None, None] <= query_T[None, :, None]) & (
        np.arange(j)[None, None] >= start_block_BT[:, :, None]
    )
    forced_BTJ = (np.arange(j)[None, None] == block_T[None, :, None]) | (
        np.arange(j)[None, None] == start_block_BT[:, :, None]
    )
    importance_BKTJ = jnp.where(forced_BTJ[:, None], jnp.inf, importance_BKTJ)
    importance_BKTJ = jnp.where(visible_BTJ[:, None], importance_BKTJ, -jnp.inf)
    _, chosen_BKTn = jax.lax.top_k(importance_BKTJ, top_n)

    s = top_n * ls
    key_index_BKTS = (chosen_BKTn[..., None] * ls + np.arange(ls)).reshape(b, k, t, s)
    pad = j * ls - t
    k_BKTSH = gather_tokens(k_BTKH, key_index_BKTS, pad)
    v_BKTSH = gather_tokens(v_BTKH, key_index_BKTS, pad)
    key_seg_BKTS = gather_tokens(segment_ids_BT[:, :, None], key_index_BKTS, pad)
    mask_BKTS = (
        (key_index_BKTS <= query_T[None, None, :, None])
        & (key_seg_BKTS == segment_ids_BT[:, None, :, None])
        & (segment_ids_BT[:, None, :, None] != 0)
    )
    q_BTKGH = q_BTNH.reshape(b, t, k, n // k, h)
    scores_BKGTS = jnp.einsum("btkgh,bktsh->bkgts", q_BTKGH, k_BKTSH).astype(jnp.float32)
    scores_BKGTS *= h**-0.5
    if bias is not None:
      key_pos_BKTS = gather_tokens(positions_BT[:, :, None], key_index_BKTS, pad)
      q_pos_BKT1 = jnp.broadcast_to(positions_BT[:, None, :, None], (b, k, t, 1))
      scores_BKGTS += group_heads(bias(q_pos_BKT1, key_pos_BKTS), k)
    probs_BKGTS = masked_softmax(scores_BKGTS, mask_BKTS[:, :, None])
    out_BTKGH = jnp.einsum("bkgts,bktsh->btkgh", probs_BKGTS.astype(v_BKTSH.dtype), v_BKTSH)
    return out_BTKGH.reshape(b, t, n, h)

  def attend_cached(self, q_BTNH, keys, values, positions_BT, bias, cache):
    """The three branches for new queries over the cache (slot = position, one document per row).

    Raw keys/values of every branch are written at the new positions; each compression block
    whose last token is new is compressed from the raw cache into its `compressed_*` slot (one
    per stride). A query sees compressed blocks that end at or before it, the tokens of its
    top-n selection blocks up to itself, and its last `window` tokens. Returns (cache, outputs).
    """
    nsa = self.config.nsa
    b, t, n, h = q_BTNH.shape
    k = keys["selected"].shape[2]
    start_B = positions_BT[:, 0]
    cache = dict(cache)
    for branch, suffix in (("compressed", "_raw"), ("selected", ""), ("window", "")):
      for kind, new_BTKH in (("key", keys[branch]), ("value", values[branch])):
        name = f"{branch}_{kind}{suffix}"
        cache[name] = write(cache[name], new_BTKH, start_B)
    s, m = cache["selected_key"].shape[1], cache["compressed_key"].shape[1]

    # Blocks completed by this step: m * stride + l - 1 in [start, start + t).
    c = t // nsa.stride + 2
    first_B = jnp.maximum(-((nsa.block_size - 1 - start_B) // nsa.stride), 0)
    block_BC = first_B[:, None] + jnp.arange(c)
    end_BC = block_BC * nsa.stride + nsa.block_size - 1
    slot_BC = jnp.where((end_BC < start_B[:, None] + t) & (block_BC < m), block_BC, m)
    index_BX = jnp.minimum(
        (block_BC[..., None] * nsa.stride + np.arange(nsa.block_size)).reshape(b, -1), s - 1
    )
    for kind in ("key", "value"):
      raw_BXKH = jnp.take_along_axis(cache[f"compressed_{kind}_raw"], index_BX[..., None, None], 1)
      blocks_BCKH = self.compress_blocks(raw_BXKH.reshape(b, c, nsa.block_size, k, h), kind)
      name = f"compressed_{kind}"
      cache[name] = cache[name].at[jnp.arange(b)[:, None], slot_BC].set(
          blocks_BCKH.astype(cache[name].dtype), mode="drop"
      )

    # Compressed branch.
    end_M = np.arange(m) * nsa.stride + nsa.block_size - 1
    mask_BTM = end_M[None, None, :] <= positions_BT[:, :, None]
    q_BTKGH = q_BTNH.reshape(b, t, k, n // k, h)
    kc_BMKH, vc_BMKH = cache["compressed_key"], cache["compressed_value"]
    scores_BKGTM = jnp.einsum("btkgh,bmkh->bkgtm", q_BTKGH, kc_BMKH).astype(jnp.float32)
    scores_BKGTM *= h**-0.5
    if bias is not None:
      end_BM = jnp.broadcast_to(jnp.asarray(end_M, positions_BT.dtype), (b, m))
      scores_BKGTM += bias(positions_BT, end_BM).reshape(b, k, n // k, t, m)
    probs_BKGTM = masked_softmax(scores_BKGTM, mask_BTM[:, None, None])
    cmp_BTKGH = jnp.einsum("bkgtm,bmkh->btkgh", probs_BKGTM.astype(vc_BMKH.dtype), vc_BMKH)

    # Selected branch: the group's top-n selection blocks by compressed attention mass.
    ls = nsa.select_size
    j = -(-s // ls)
    top_n = min(nsa.top_n, j)
    first_J = np.arange(j) * ls
    overlap_MJ = (np.arange(m)[:, None] * nsa.stride < first_J[None] + ls) & (
        first_J[None] < np.arange(m)[:, None] * nsa.stride + nsa.block_size
    )
    importance_BKTJ = probs_BKGTM.sum(axis=2) @ overlap_MJ.astype(jnp.float32)
    pos_BT1 = positions_BT[:, :, None]
    forced_BTJ = (np.arange(j) == pos_BT1 // ls) | (np.arange(j) == 0)
    importance_BKTJ = jnp.where(forced_BTJ[:, None], jnp.inf, importance_BKTJ)
    importance_BKTJ = jnp.where((first_J <= pos_BT1)[:, None], importance_BKTJ, -jnp.inf)
    _, chosen_BKTn = jax.lax.top_k(importance_BKTJ, top_n)
    key_index_BKTS = (chosen_BKTn[..., None] * ls + np.arange(ls)).reshape(b, k, t, top_n * ls)
    pad = j * ls - s
    k_BKTSH = gather_tokens(cache["selected_key"], key_index_BKTS, pad)
    v_BKTSH = gather_tokens(cache["selected_value"], key_index_BKTS, pad)
    mask_BKTS = key_index_BKTS <= positions_BT[:, None, :, None]
    scores_BKGTS = jnp.einsum("btkgh,bktsh->bkgts", q_BTKGH, k_BKTSH).astype(jnp.float32)
    scores_BKGTS *= h**-0.5
    if bias is not None:
      q_pos_BKT1 = jnp.broadcast_to(positions_BT[:, None, :, None], (b, k, t, 1))
      scores_BKGTS += group_heads(bias(q_pos_BKT1, key_index_BKTS), k)
    probs_BKGTS = masked_softmax(scores_BKGTS, mask_BKTS[:, :, None])
    sel_BTKGH = jnp.einsum("bkgts,bktsh->btkgh", probs_BKGTS.astype(v_BKTSH.dtype), v_BKTSH)

    win_BTNH = cached_attention(
        q_BTNH, cache["window_key"], cache["window_value"], positions_BT, bias, nsa.window
    )
    return cache, (cmp_BTKGH.reshape(b, t, n, h), sel_BTKGH.reshape(b, t, n, h), win_BTNH)

  @staticmethod
  def matmul_params(cfg: ml_collections.ConfigDict) -> int:
    """Per token and layer: Q (d N H), the three branches' K and V (6 d K H), the output (N H d),
    the gate MLP (d f + f 3N), and the compression MLPs amortized over the stride: keys and
    values each run (l H x H + H x H) per KV head once per d tokens."""
    nsa, d, n, k, h = cfg.nsa, cfg.d_model, cfg.num_heads, cfg.num_kv_heads, head_dim(cfg)
    f = NativeSparseAttention.gate_hidden(cfg)
    compression = 2 * k * (nsa.block_size * h * h + h * h) // nsa.stride
    return d * n * h * 2 + 6 * d * k * h + d * f + f * 3 * n + compression

  @staticmethod
  def score_flops_per_token(cfg: ml_collections.ConfigDict, seq_len: int) -> int:
    """12 N H (fwd + bwd, QK and PV) per scored key, keys per query summed over branches:
    compressed M / 2 under the causal mask (M blocks in the row), selected n l' (gathered and
    scored whether masked or not), window the mean visible keys (as `sliding`)."""
    nsa = cfg.nsa
    m = num_compressed_blocks(seq_len, nsa.block_size, nsa.stride)
    w = min(nsa.window, seq_len)
    visible = w - (w * (w - 1)) / (2 * seq_len)
    selected = min(nsa.top_n * nsa.select_size, seq_len)
    return int(12 * cfg.num_heads * head_dim(cfg) * (m / 2 + selected + visible))

  @staticmethod
  def kv_cache_spec(cfg: ml_collections.ConfigDict) -> dict[str, CacheEntry]:
    """Per KV head: raw compression-branch keys/values for the block being filled (window l),
    one compressed key/value per stride d, selection keys/values for every token, and window
    keys/values for the last w tokens."""
    nsa, shape, dt = cfg.nsa, (cfg.num_kv_heads, head_dim(cfg)), cfg.dtype
    return {
        "compressed_key_raw": CacheEntry(shape, dt, window=nsa.block_size),
        "compressed_value_raw": CacheEntry(shape, dt, window=nsa.block_size),
        "compressed_key": CacheEntry(shape, dt, every=nsa.stride),
        "compressed_value": CacheEntry(shape, dt, every=nsa.stride),
        "selected_key": CacheEntry(shape, dt),
        "selected_value": CacheEntry(shape, dt),
        "window_key": CacheEntry(shape, dt, window=nsa.window),
        "window_value": CacheEntry(shape, dt, window=nsa.window),
    }
