"""Multi-head latent attention (DeepSeek-V2): latent KV, low-rank queries, decoupled RoPE.

  c_q  = RMSNorm(x W_dq)                      [q_latent]      queries' low-rank latent
  q    = [c_q W_uq (N x qk), rot(c_q W_qr) (N x rope)]
  c_kv = RMSNorm(x W_dkv)                     [kv_latent]     cached
  k_r  = rot(x W_kr)                          [rope]          cached, ONE key shared by all heads
  k    = [c_kv W_uk (N x qk), k_r]    v = c_kv W_uv (N x v)
  out  = softmax(q k^T / sqrt(qk + rope)) v W_o

`rot` is the position encoding's rotation (RoPE for `rope`, identity otherwise); score-bias
encodings (relative, alibi) add their bias. `absorbed` computes the same output the way a decoder
does from the cache: W_uk folded into the query, W_uv applied after attending to the latents.
"""

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from efficiency.attention.cache import CacheEntry, cached_attention, write
from efficiency.attention.dot_product import grouped_attention
from efficiency.attention.gqa import projection_kwargs
from efficiency.attention.masks import causal_segment_mask
from efficiency.model.layers import Projection, RMSNorm
from efficiency.position import get_position


class MultiHeadLatentAttention(nn.Module):
  """MLA with sizes from `model.mla`: kv_latent_dim, q_latent_dim, rope_dim, qk_head_dim,
  v_head_dim."""

  config: ml_collections.FrozenConfigDict

  def setup(self):
    cfg = self.config
    m, d, n = cfg.mla, cfg.d_model, cfg.num_heads
    kw = projection_kwargs(cfg)
    dtypes = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))
    self.q_down = Projection("btd,dc->btc", (d, m.q_latent_dim), ("embed", "latent"), **kw)
    self.q_norm = RMSNorm(cfg.norm_eps, **dtypes)
    self.q_up = Projection(
        "btc,cnh->btnh", (m.q_latent_dim, n, m.qk_head_dim), ("latent", "heads", "head_dim"), **kw
    )
    self.q_rope = Projection(
        "btc,cnh->btnh", (m.q_latent_dim, n, m.rope_dim), ("latent", "heads", "head_dim"), **kw
    )
    self.kv_down = Projection("btd,dc->btc", (d, m.kv_latent_dim), ("embed", "latent"), **kw)
    self.kv_norm = RMSNorm(cfg.norm_eps, **dtypes)
    self.k_rope = Projection("btd,dh->bth", (d, m.rope_dim), ("embed", "head_dim"), **kw)
    self.k_up = Projection(
        "btc,cnh->btnh", (m.kv_latent_dim, n, m.qk_head_dim), ("latent", "heads", "head_dim"),
        **kw,
    )
    self.v_up = Projection(
        "btc,cnh->btnh", (m.kv_latent_dim, n, m.v_head_dim), ("latent", "heads", "head_dim"),
        **kw,
    )
    self.out = Projection(
        "btnh,nhd->btd", (n, m.v_head_dim, d), ("heads", "head_dim", "embed"), **kw
    )
    self.position = get_position(cfg.position)(cfg)
    self.bias = self.position.score_bias()

  def _queries_and_cache(self, x_BTD, positions_BT):
    """Query parts and the cached latents: q_nope [B,T,N,qk], q_rope [B,T,N,r], c_kv [B,T,C],
    k_rope [B,T,r]."""
    c_q_BTC = self.q_norm(self.q_down(x_BTD))
    q_nope_BTNH = self.q_up(c_q_BTC)
    q_rope_BTNR = self.position.rotate(self.q_rope(c_q_BTC), positions_BT)
    c_kv_BTC = self.kv_norm(self.kv_down(x_BTD))
    k_rope_BTR = self.position.rotate(self.k_rope(x_BTD)[:, :, None], positions_BT)[:, :, 0]
    return q_nope_BTNH, q_rope_BTNR, c_kv_BTC, k_rope_BTR

  def _mask_and_bias(self, segment_ids_BT, positions_BT):
    mask_B1TS = causal_segment_mask(segment_ids_BT, segment_ids_BT, positions_BT, positions_BT)
    bias_BNTS = None if self.bias is None else self.bias(positions_BT, positions_BT)
    return mask_B1TS, bias_BNTS

  def _scale(self) -> float:
    return (self.config.mla.qk_head_dim + self.config.mla.rope_dim) ** -0.5

  def __call__(
      self,
      x_BTD: jnp.ndarray,
      segment_ids_BT: jnp.ndarray,
      positions_BT: jnp.ndarray,
      cache: dict[str, jnp.ndarray] | None = None,
  ) -> jnp.ndarray | tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Training form: up-project per-head keys and values, then multi-head attention.

    With a `cache` ({"c_kv": [B, S, C], "k_rope": [B, S, r]}) it decodes instead (`decode`).
    """
    if cache is not None:
      return self.decode(x_BTD, positions_BT, cache)
    q_nope_BTNH, q_rope_BTNR, c_kv_BTC, k_rope_BTR = self._queries_and_cache(x_BTD, positions_BT)
    n = self.config.num_heads
    q_BTNH = jnp.concatenate([q_nope_BTNH, q_rope_BTNR], axis=-1)
    k_rope_BTNR = jnp.broadcast_to(k_rope_BTR[:, :, None], (*k_rope_BTR.shape[:2], n,
                                                             k_rope_BTR.shape[-1]))
    k_BTNH = jnp.concatenate([self.k_up(c_kv_BTC), k_rope_BTNR], axis=-1)
    v_BTNV = self.v_up(c_kv_BTC)
    q_BTNH = nn.with_logical_constraint(
        q_BTNH, ("activation_batch", "activation_length", "activation_heads", "head_dim")
    )
    mask_B1TS, bias_BNTS = self._mask_and_bias(segment_ids_BT, positions_BT)
    out_BTNV = grouped_attention(
        q_BTNH, k_BTNH, v_BTNV, mask_B1TS, bias_BNTS, self._scale(), self.config.get("quant")
    )
    return self.out(out_BTNV)

  def absorbed(
      self, x_BTD: jnp.ndarray, segment_ids_BT: jnp.ndarray, positions_BT: jnp.ndarray
  ) -> jnp.ndarray:
    """Decode form: attend to the cached latents (c_kv, k_rope) with W_uk absorbed into the
    query (q_lat = q_nope W_uk^T) and W_uv applied to the attended latent; one 'KV head' of
    dim kv_latent + rope shared by all query heads."""
    q_nope_BTNH, q_rope_BTNR, c_kv_BTC, k_rope_BTR = self._queries_and_cache(x_BTD, positions_BT)
    w_uk_CNH = self.k_up.variables["params"]["kernel"].astype(q_nope_BTNH.dtype)
    w_uv_CNV = self.v_up.variables["params"]["kernel"].astype(c_kv_BTC.dtype)
    q_latent_BTNC = jnp.einsum("btnh,cnh->btnc", q_nope_BTNH, w_uk_CNH)
    q_BTNH = jnp.concatenate([q_latent_BTNC, q_rope_BTNR], axis=-1)
    k_BT1H = jnp.concatenate([c_kv_BTC, k_rope_BTR], axis=-1)[:, :, None]
    mask_B1TS, bias_BNTS = self._mask_and_bias(segment_ids_BT, positions_BT)
    latent_BTNC = grouped_attention(
        q_BTNH, k_BT1H, c_kv_BTC[:, :, None], mask_B1TS, bias_BNTS, self._scale()
    )
    return self.out(jnp.einsum("btnc,cnv->btnv", latent_BTNC, w_uv_CNV))

  def decode(
      self, x_BTD: jnp.ndarray, positions_BT: jnp.ndarray, cache: dict[str, jnp.ndarray]
  ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """The absorbed form over the cache: writes the new tokens' latents at their positions, then
    the queries attend to every cached latent up to their own position. Served quantized models
    (no float up-projection kernels) up-project the cached latents instead."""
    q_nope_BTNH, q_rope_BTNR, c_kv_BTC, k_rope_BTR = self._queries_and_cache(x_BTD, positions_BT)
    start_B = positions_BT[:, 0]
    cache = {"c_kv": write(cache["c_kv"], c_kv_BTC, start_B),
             "k_rope": write(cache["k_rope"], k_rope_BTR, start_B)}
    c_kv_BSC = cache["c_kv"].astype(c_kv_BTC.dtype)
    k_rope_BSR = cache["k_rope"].astype(c_kv_BTC.dtype)
    if "kernel" not in self.k_up.variables.get("params", {}):
      # A served quantized model holds no float W_uk / W_uv to absorb: up-project the cached
      # latents through the quantized projections instead (the training form over the cache).
      n = self.config.num_heads
      k_rope_BSNR = jnp.broadcast_to(k_rope_BSR[:, :, None], (*k_rope_BSR.shape[:2], n,
                                                               k_rope_BSR.shape[-1]))
      k_BSNH = jnp.concatenate([self.k_up(c_kv_BSC), k_rope_BSNR], axis=-1)
      q_BTNH = jnp.concatenate([q_nope_BTNH, q_rope_BTNR], axis=-1)
      out_BTNV = cached_attention(
          q_BTNH, k_BSNH, self.v_up(c_kv_BSC), positions_BT, self.bias, scale=self._scale()
      )
      return self.out(out_BTNV), cache
    w_uk_CNH = self.k_up.variables["params"]["kernel"].astype(q_nope_BTNH.dtype)
    w_uv_CNV = self.v_up.variables["params"]["kernel"].astype(c_kv_BTC.dtype)
    q_latent_BTNC = jnp.einsum("btnh,cnh->btnc", q_nope_BTNH, w_uk_CNH)
    q_BTNH = jnp.concatenate([q_latent_BTNC, q_rope_BTNR], axis=-1)
    k_BS1H = jnp.concatenate([c_kv_BSC, k_rope_BSR], axis=-1)[:, :, None]
    latent_BTNC = cached_attention(
        q_BTNH, k_BS1H, c_kv_BSC[:, :, None], positions_BT, self.bias, scale=self._scale()
    )
    return self.out(jnp.einsum("btnc,cnv->btnv", latent_BTNC, w_uv_CNV)), cache

  @staticmethod
  def matmul_params(cfg: ml_collections.ConfigDict) -> int:
    """Per layer: W_dq (d x c'), W_uq and W_qr (c' x N(qk + r)), W_dkv (d x c), W_kr (d x r),
    W_uk and W_uv (c x N(qk + v)), W_o (N v x d). Counted in the training form."""
    m, d, n = cfg.mla, cfg.d_model, cfg.num_heads
    return (
        d * m.q_latent_dim + m.q_latent_dim * n * (m.qk_head_dim + m.rope_dim)
        + d * (m.kv_latent_dim + m.rope_dim) + m.kv_latent_dim * n * (m.qk_head_dim + m.v_head_dim)
        + n * m.v_head_dim * d
    )

  @staticmethod
  def score_flops_per_token(cfg: ml_collections.ConfigDict, seq_len: int) -> int:
    """QK^T over qk + rope dims and PV over v dims, causal: 2 x 3 x (T / 2) x N x (qk + r + v)
    = 3 T N (qk + r + v); with qk + r = v = H this is GQA's 6 T N H."""
    m = cfg.mla
    return 3 * seq_len * cfg.num_heads * (m.qk_head_dim + m.rope_dim + m.v_head_dim)

  @staticmethod
  def kv_cache_spec(cfg: ml_collections.ConfigDict) -> dict[str, CacheEntry]:
    """The normalized KV latent and the one shared rotated rope key: kv_latent + rope values."""
    return {
        "c_kv": CacheEntry((cfg.mla.kv_latent_dim,), cfg.dtype),
        "k_rope": CacheEntry((cfg.mla.rope_dim,), cfg.dtype),
    }
