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

Training and decoding run the same branch functions (`attend_blocks`, `choose_blocks`,
`attend_selected`); they differ only in where keys come from (the row, or the cache with one
document per row: selection keys and compressed blocks at slot = position, the window branch's
keys and the raw keys of the block being compressed in ring buffers) and in the masks that follow
from it.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from efficiency.attention.base import Attention, Cache, Heads, head_dim
from efficiency.attention.cache import CacheEntry, ring_attention, ring_write, write
from efficiency.attention.dot_product import NEG_INF
from efficiency.attention.windowed import mean_visible_keys
from efficiency.model.layers import Projection

BRANCHES = ("compressed", "selected", "window")
KINDS = ("key", "value")


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


def block_overlap(nsa: ml_collections.ConfigDict, m: int, j: int) -> np.ndarray:
  """overlap_MJ[i, j]: compression block i shares tokens with selection block j."""
  first_M = np.arange(m) * nsa.stride
  first_J = np.arange(j) * nsa.select_size
  return (first_M[:, None] < first_J[None] + nsa.select_size) & (
      first_J[None] < first_M[:, None] + nsa.block_size
  )


def attend_blocks(
    q_BTNH: jnp.ndarray,
    kc_BMKH: jnp.ndarray,
    vc_BMKH: jnp.ndarray,
    mask_BTM: jnp.ndarray,
    bias: nn.Module | None,
    q_positions_BT: jnp.ndarray,
    k_positions_BM: jnp.ndarray,
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """The compressed branch: attention to the compressed blocks a query may see, and the
  group-summed probabilities [B, K, T, M] that rank blocks for selection."""
  b, t, n, h = q_BTNH.shape
  k, m = kc_BMKH.shape[2], kc_BMKH.shape[1]
  q_BTKGH = q_BTNH.reshape(b, t, k, n // k, h)
  scores_BKGTM = jnp.einsum("btkgh,bmkh->bkgtm", q_BTKGH, kc_BMKH).astype(jnp.float32)
  scores_BKGTM *= h**-0.5
  if bias is not None:
    scores_BKGTM += bias(q_positions_BT, k_positions_BM).reshape(b, k, n // k, t, m)
  probs_BKGTM = masked_softmax(scores_BKGTM, mask_BTM[:, None, None])
  out_BTKGH = jnp.einsum("bkgtm,bmkh->btkgh", probs_BKGTM.astype(vc_BMKH.dtype), vc_BMKH)
  return out_BTKGH.reshape(b, t, n, h), probs_BKGTM.sum(axis=2)


def choose_blocks(
    nsa: ml_collections.ConfigDict,
    importance_BKTM: jnp.ndarray,
    length: int,
    q_index_BT: jnp.ndarray,
    start_block_BT: jnp.ndarray,
) -> jnp.ndarray:
  """Each GQA group's top-n selection blocks [B, K, T, n] of a row of `length` keys, by the
  compressed attention mass of the blocks overlapping them. A query at row index i may choose
  blocks that start at or before i and not before its document's first block; its own block and
  the document's first block are always chosen."""
  j = -(-length // nsa.select_size)
  overlap_MJ = block_overlap(nsa, importance_BKTM.shape[-1], j)
  importance_BKTJ = importance_BKTM @ overlap_MJ.astype(importance_BKTM.dtype)
  block_J = np.arange(j)
  q_BT1 = q_index_BT[:, :, None]
  start_BT1 = start_block_BT[:, :, None]
  visible_BTJ = (block_J * nsa.select_size <= q_BT1) & (block_J >= start_BT1)
  forced_BTJ = (block_J == q_BT1 // nsa.select_size) | (block_J == start_BT1)
  importance_BKTJ = jnp.where(forced_BTJ[:, None], jnp.inf, importance_BKTJ)
  importance_BKTJ = jnp.where(visible_BTJ[:, None], importance_BKTJ, -jnp.inf)
  return jax.lax.top_k(importance_BKTJ, min(nsa.top_n, j))[1]


def attend_selected(
    nsa: ml_collections.ConfigDict,
    q_BTNH: jnp.ndarray,
    k_BSKH: jnp.ndarray,
    v_BSKH: jnp.ndarray,
    chosen_BKTn: jnp.ndarray,
    q_index_BT: jnp.ndarray,
    bias: nn.Module | None,
    q_positions_BT: jnp.ndarray,
    k_positions_BS: jnp.ndarray,
    segment_ids_BT: jnp.ndarray | None = None,
) -> jnp.ndarray:
  """The selected branch: attention to the tokens of each query's chosen blocks, gathered per
  query, up to the query's row index (and, given `segment_ids_BT`, inside its document)."""
  b, t, n, h = q_BTNH.shape
  k, length = k_BSKH.shape[2], k_BSKH.shape[1]
  ls, top_n = nsa.select_size, chosen_BKTn.shape[-1]
  s = top_n * ls
  key_index_BKTS = (chosen_BKTn[..., None] * ls + np.arange(ls)).reshape(b, k, t, s)
  pad = -(-length // ls) * ls - length
  k_BKTSH = gather_tokens(k_BSKH, key_index_BKTS, pad)
  v_BKTSH = gather_tokens(v_BSKH, key_index_BKTS, pad)
  mask_BKTS = key_index_BKTS <= q_index_BT[:, None, :, None]
  if segment_ids_BT is not None:
    key_seg_BKTS = gather_tokens(segment_ids_BT[:, :, None], key_index_BKTS, pad)
    mask_BKTS &= (key_seg_BKTS == segment_ids_BT[:, None, :, None]) & (
        segment_ids_BT[:, None, :, None] != 0
    )
  q_BTKGH = q_BTNH.reshape(b, t, k, n // k, h)
  scores_BKGTS = jnp.einsum("btkgh,bktsh->bkgts", q_BTKGH, k_BKTSH).astype(jnp.float32)
  scores_BKGTS *= h**-0.5
  if bias is not None:
    key_pos_BKTS = gather_tokens(k_positions_BS[:, :, None], key_index_BKTS, pad)
    q_pos_BKT1 = jnp.broadcast_to(q_positions_BT[:, None, :, None], (b, k, t, 1))
    scores_BKGTS += group_heads(bias(q_pos_BKT1, key_pos_BKTS), k)
  probs_BKGTS = masked_softmax(scores_BKGTS, mask_BKTS[:, :, None])
  out_BTKGH = jnp.einsum("bkgts,bktsh->btkgh", probs_BKGTS.astype(v_BKTSH.dtype), v_BKTSH)
  return out_BTKGH.reshape(b, t, n, h)


class NativeSparseAttention(Attention):
  """NSA over GQA-grouped heads; see the module docstring. Heads are the query, each branch's
  keys and values ("{branch}_{key|value}") and the branch gates [B, T, N, 3] (float32)."""

  def setup(self):
    super().setup()
    cfg, nsa = self.config, self.config.nsa
    h, f, kw = head_dim(cfg), self.gate_hidden(cfg), self.projection_kwargs()
    self.query = self.query_projection()
    self.branch_kv = {
        f"{b}_{kind}": self.kv_projection(f"{b}_{kind}") for b in BRANCHES for kind in KINDS
    }
    self.gate_in = Projection(
        "btd,df->btf", (cfg.d_model, f), ("embed", "mlp"), name="gate_hidden", **kw
    )
    self.gate_out = Projection(
        "btf,fng->btng", (f, cfg.num_heads, 3), ("mlp", "heads", None), name="gate", **kw
    )
    init = nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), (None, "head_dim"))
    self.block_position = {
        kind: self.param(f"{kind}_block_position", init, (nsa.block_size, h),
                         jnp.dtype(cfg.param_dtype))
        for kind in KINDS
    }
    self.compress_in = {
        kind: Projection("bmkf,fh->bmkh", (nsa.block_size * h, h), (None, "head_dim"),
                         name=f"{kind}_mlp_in", **kw)
        for kind in KINDS
    }
    self.compress_out = {
        kind: Projection("bmkh,hj->bmkj", (h, h), ("head_dim", None), name=f"{kind}_mlp_out", **kw)
        for kind in KINDS
    }

  @staticmethod
  def gate_hidden(cfg: ml_collections.ConfigDict) -> int:
    """Width of the gate MLP's hidden layer."""
    return max(cfg.d_model // 4, 1)

  def project(self, x_BTD: jnp.ndarray, positions_BT: jnp.ndarray) -> Heads:
    heads = {"query": self.position.rotate(self.query(x_BTD), positions_BT)}
    for b in BRANCHES:
      heads[f"{b}_key"] = self.position.rotate(self.branch_kv[f"{b}_key"](x_BTD), positions_BT)
      heads[f"{b}_value"] = self.branch_kv[f"{b}_value"](x_BTD)
    hidden_BTF = nn.silu(self.gate_in(x_BTD))
    heads["gates"] = nn.sigmoid(self.gate_out(hidden_BTF).astype(jnp.float32))
    return heads

  def mix(self, heads: Heads, *branches_BTNH: jnp.ndarray) -> jnp.ndarray:
    """The branches' outputs weighted by their gates, summed: [B, T, N, H]."""
    branches_BTNHG = jnp.stack(branches_BTNH, axis=-1).astype(jnp.float32)
    out_BTNH = jnp.einsum("btnhg,btng->btnh", branches_BTNHG, heads["gates"])
    return out_BTNH.astype(heads["query"].dtype)

  def compress(self, x_BTKH: jnp.ndarray, kind: str) -> jnp.ndarray:
    """Blocks of l tokens every d tokens -> one vector per block and KV head: [B, M, K, H]."""
    nsa = self.config.nsa
    m = num_compressed_blocks(x_BTKH.shape[1], nsa.block_size, nsa.stride)
    index_ML = np.arange(m)[:, None] * nsa.stride + np.arange(nsa.block_size)[None]
    return self.compress_blocks(x_BTKH[:, index_ML], kind)

  def compress_blocks(self, blocks_BMLKH: jnp.ndarray, kind: str) -> jnp.ndarray:
    """Blocks [B, M, l, K, H] of raw keys or values -> [B, M, K, H]."""
    b, m, length, k, h = blocks_BMLKH.shape
    position_LH = self.block_position[kind]
    blocks_BMLKH = blocks_BMLKH + position_LH[:, None].astype(blocks_BMLKH.dtype)
    flat_BMKF = blocks_BMLKH.transpose(0, 1, 3, 2, 4).reshape(b, m, k, length * h)
    return self.compress_out[kind](nn.silu(self.compress_in[kind](flat_BMKF)))

  def attend(
      self, heads: Heads, segment_ids_BT: jnp.ndarray, positions_BT: jnp.ndarray
  ) -> jnp.ndarray:
    nsa = self.config.nsa
    q_BTNH = heads["query"]
    t = q_BTNH.shape[1]
    kc_BMKH = self.compress(heads["compressed_key"], "key")
    vc_BMKH = self.compress(heads["compressed_value"], "value")
    first_M = np.arange(kc_BMKH.shape[1]) * nsa.stride
    last_M = first_M + nsa.block_size - 1
    seg_BT1 = segment_ids_BT[:, :, None]
    mask_BTM = (
        (last_M[None, None, :] <= np.arange(t)[None, :, None])
        & (segment_ids_BT[:, first_M][:, None, :] == seg_BT1)
        & (segment_ids_BT[:, last_M][:, None, :] == seg_BT1)
        & (seg_BT1 != 0)
    )
    cmp_BTNH, importance_BKTM = attend_blocks(
        q_BTNH, kc_BMKH, vc_BMKH, mask_BTM, self.bias, positions_BT, positions_BT[:, last_M]
    )
    q_index_1T = np.arange(t)[None]  # causality by index in the packed row
    start_block_BT = document_starts(segment_ids_BT) // nsa.select_size
    chosen_BKTn = choose_blocks(nsa, importance_BKTM, t, q_index_1T, start_block_BT)
    sel_BTNH = attend_selected(
        nsa, q_BTNH, heads["selected_key"], heads["selected_value"], chosen_BKTn, q_index_1T,
        self.bias, positions_BT, positions_BT, segment_ids_BT,
    )
    win_BTNH = self.self_attention(
        q_BTNH, heads["window_key"], heads["window_value"], segment_ids_BT, positions_BT,
        nsa.window, quantized=False,
    )
    return self.mix(heads, cmp_BTNH, sel_BTNH, win_BTNH)

  def attend_cached(
      self, heads: Heads, segment_ids_BT: jnp.ndarray, positions_BT: jnp.ndarray, cache: Cache
  ) -> tuple[jnp.ndarray, Cache]:
    """Selection keys/values are written at slot = position; the compression branch's raw
    keys/values and the window branch's keys/values go into rings (`ring_write`), since only
    the block being compressed and the window read them. Each compression block whose last
    token is new is compressed from its raw tokens (from the raw ring as it was before the call,
    and the call's own) into its `compressed_*` slot (one per stride). Then the branch functions
    run over the cache: compressed blocks that end at or before the query, the tokens of its
    top-n selection blocks up to itself, its last `window` tokens (`ring_attention`)."""
    nsa = self.config.nsa
    q_BTNH = heads["query"]
    b, t = q_BTNH.shape[:2]
    start_B = positions_BT[:, 0]
    new = dict(cache)
    for kind in KINDS:
      new[f"selected_{kind}"] = write(cache[f"selected_{kind}"], heads[f"selected_{kind}"],
                                      start_B)
      for ring, source in ((f"compressed_{kind}_raw", f"compressed_{kind}"),
                           (f"window_{kind}", f"window_{kind}")):
        new[ring] = ring_write(cache[ring], heads[source], start_B, segment_ids_BT)
    s, m = new["selected_key"].shape[1], cache["compressed_key"].shape[1]

    # Blocks completed by this step: m * stride + l - 1 in [start, start + t).
    c = t // nsa.stride + 2
    first_B = jnp.maximum(-((nsa.block_size - 1 - start_B) // nsa.stride), 0)
    block_BC = first_B[:, None] + jnp.arange(c)
    end_BC = block_BC * nsa.stride + nsa.block_size - 1
    slot_BC = jnp.where((end_BC < start_B[:, None] + t) & (block_BC < m), block_BC, m)
    # A block's tokens before the call come from the raw ring, the rest from the call itself.
    r = cache["compressed_key_raw"].shape[1]
    position_BX = (block_BC[..., None] * nsa.stride + np.arange(nsa.block_size)).reshape(b, -1)
    offset_BX = position_BX - start_B[:, None]
    index_BX = jnp.where(offset_BX < 0, position_BX % r, r + jnp.minimum(offset_BX, t - 1))
    for kind in KINDS:
      ring_BRKH = cache[f"compressed_{kind}_raw"]
      context_BYKH = jnp.concatenate(
          [ring_BRKH, heads[f"compressed_{kind}"].astype(ring_BRKH.dtype)], axis=1
      )
      raw_BXKH = jnp.take_along_axis(context_BYKH, index_BX[..., None, None], 1)
      k, h = raw_BXKH.shape[2:]
      blocks_BCKH = self.compress_blocks(raw_BXKH.reshape(b, c, nsa.block_size, k, h), kind)
      name = f"compressed_{kind}"
      new[name] = cache[name].at[jnp.arange(b)[:, None], slot_BC].set(
          blocks_BCKH.astype(cache[name].dtype), mode="drop"
      )

    end_M = np.arange(m) * nsa.stride + nsa.block_size - 1
    end_BM = jnp.broadcast_to(jnp.asarray(end_M, positions_BT.dtype), (b, m))
    cmp_BTNH, importance_BKTM = attend_blocks(
        q_BTNH, new["compressed_key"], new["compressed_value"],
        end_M[None, None, :] <= positions_BT[:, :, None], self.bias, positions_BT, end_BM,
    )
    chosen_BKTn = choose_blocks(nsa, importance_BKTM, s, positions_BT, jnp.zeros_like(positions_BT))
    slots_BS = jnp.broadcast_to(jnp.arange(s, dtype=positions_BT.dtype), (b, s))
    sel_BTNH = attend_selected(
        nsa, q_BTNH, new["selected_key"], new["selected_value"], chosen_BKTn, positions_BT,
        self.bias, positions_BT, slots_BS,
    )
    win_BTNH = ring_attention(
        q_BTNH, cache["window_key"], cache["window_value"], heads["window_key"],
        heads["window_value"], positions_BT, self.bias, nsa.window,
    )
    return self.mix(heads, cmp_BTNH, sel_BTNH, win_BTNH), new

  @staticmethod
  def window_of(cfg: ml_collections.ConfigDict) -> int:
    """The sliding-window branch is the one that goes through a kernel."""
    return cfg.nsa.window

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
    visible = mean_visible_keys(nsa.window, seq_len)
    selected = min(nsa.top_n * nsa.select_size, seq_len)
    return int(12 * cfg.num_heads * head_dim(cfg) * (m / 2 + selected + visible))

  @staticmethod
  def kv_cache_spec(cfg: ml_collections.ConfigDict) -> dict[str, CacheEntry]:
    """Per KV head: raw compression-branch keys/values for the block being filled (window l),
    one compressed key/value per stride d, selection keys/values for every token (any block of
    the context may be selected), and window keys/values for the last w tokens. Each branch has
    its own keys and values, so the windowed ones (rings when decoding) are read by the window
    branch and the compression of new blocks only."""
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
