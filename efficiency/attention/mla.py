"""Multi-head latent attention (DeepSeek-V2): latent KV, low-rank queries, decoupled RoPE.

  c_q  = RMSNorm(x W_dq)                      [q_latent]      queries' low-rank latent
  q    = [c_q W_uq (N x qk), rot(c_q W_qr) (N x rope)]
  c_kv = RMSNorm(x W_dkv)                     [kv_latent]     cached
  k_r  = rot(x W_kr)                          [rope]          cached, ONE key shared by all heads
  k    = [c_kv W_uk (N x qk), k_r]    v = c_kv W_uv (N x v)
  out  = softmax(q k^T / sqrt(qk + rope)) v W_o

`rot` is the position encoding's rotation (RoPE for `rope`, identity otherwise); score-bias
encodings (relative, alibi) add their bias. Two forms compute the same output from the latents:
`expanded_form` up-projects per-head keys and values (training); `absorbed_form` folds W_uk into
the query and applies W_uv after attending to the latents (decoding from the cache).
"""

from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from efficiency.attention.base import Attention, Cache, Heads, position_bias_kind
from efficiency.attention.cache import CacheEntry, cached_attention, write
from efficiency.attention.kernels.case import AttentionCase
from efficiency.model.layers import Projection, RMSNorm

# (q_BTNH, k_BSKH, v_BSKV) -> [B, T, N, V]: softmax attention with the form's mask and bias.
AttentionFn = Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray], jnp.ndarray]


class MultiHeadLatentAttention(Attention):
  """MLA with sizes from `model.mla`: kv_latent_dim, q_latent_dim, rope_dim, qk_head_dim,
  v_head_dim. Heads are {"q_nope", "q_rope", "c_kv", "k_rope"}; the cache holds c_kv [B, S, C]
  and k_rope [B, S, r]."""

  def setup(self):
    super().setup()
    cfg = self.config
    m, d, n = cfg.mla, cfg.d_model, cfg.num_heads
    kw = self.projection_kwargs()
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

  def project(self, x_BTD: jnp.ndarray, positions_BT: jnp.ndarray) -> Heads:
    """Query parts q_nope [B,T,N,qk], q_rope [B,T,N,r] and the latents c_kv [B,T,C],
    k_rope [B,T,r]."""
    c_q_BTC = self.q_norm(self.q_down(x_BTD))
    heads = {
        "q_nope": self.q_up(c_q_BTC),
        "q_rope": self.position.rotate(self.q_rope(c_q_BTC), positions_BT),
        "c_kv": self.kv_norm(self.kv_down(x_BTD)),
    }
    heads["k_rope"] = self.position.rotate(self.k_rope(x_BTD)[:, :, None], positions_BT)[:, :, 0]
    return heads

  def scale(self) -> float:
    return (self.config.mla.qk_head_dim + self.config.mla.rope_dim) ** -0.5

  def expanded_form(
      self, heads: Heads, c_kv_BSC: jnp.ndarray, k_rope_BSR: jnp.ndarray, attention: AttentionFn
  ) -> jnp.ndarray:
    """Per-head keys [c_kv W_uk, k_r] and values c_kv W_uv, then `attention`: [B, T, N, v]."""
    n = self.config.num_heads
    q_BTNH = nn.with_logical_constraint(
        jnp.concatenate([heads["q_nope"], heads["q_rope"]], axis=-1),
        ("activation_batch", "activation_length", "activation_heads", "head_dim"),
    )
    k_rope_BSNR = jnp.broadcast_to(k_rope_BSR[:, :, None], (*k_rope_BSR.shape[:2], n,
                                                             k_rope_BSR.shape[-1]))
    k_BSNH = jnp.concatenate([self.k_up(c_kv_BSC), k_rope_BSNR], axis=-1)
    return attention(q_BTNH, k_BSNH, self.v_up(c_kv_BSC))

  def absorbed_form(
      self, heads: Heads, c_kv_BSC: jnp.ndarray, k_rope_BSR: jnp.ndarray, attention: AttentionFn
  ) -> jnp.ndarray:
    """W_uk folded into the query (q_lat = q_nope W_uk^T) and W_uv applied to the attended
    latent; `attention` scores one 'KV head' of dim kv_latent + rope shared by all query heads.
    Needs the float W_uk / W_uv kernels (a served quantized model has none)."""
    w_uk_CNH = self.k_up.variables["params"]["kernel"].astype(heads["q_nope"].dtype)
    w_uv_CNV = self.v_up.variables["params"]["kernel"].astype(c_kv_BSC.dtype)
    q_latent_BTNC = jnp.einsum("btnh,cnh->btnc", heads["q_nope"], w_uk_CNH)
    q_BTNH = jnp.concatenate([q_latent_BTNC, heads["q_rope"]], axis=-1)
    k_BS1H = jnp.concatenate([c_kv_BSC, k_rope_BSR], axis=-1)[:, :, None]
    latent_BTNC = attention(q_BTNH, k_BS1H, c_kv_BSC[:, :, None])
    return jnp.einsum("btnc,cnv->btnv", latent_BTNC, w_uv_CNV)

  def attend(
      self, heads: Heads, segment_ids_BT: jnp.ndarray, positions_BT: jnp.ndarray
  ) -> jnp.ndarray:
    """The expanded form over the input's own latents."""
    return self.expanded_form(
        heads, heads["c_kv"], heads["k_rope"], self.document_attention(segment_ids_BT, positions_BT)
    )

  def absorbed(
      self, x_BTD: jnp.ndarray, segment_ids_BT: jnp.ndarray, positions_BT: jnp.ndarray
  ) -> jnp.ndarray:
    """The whole layer in the absorbed form over the input's own latents (what decoding
    computes), for checking it against the training form."""
    heads = self.project(x_BTD, positions_BT)
    attention = self.document_attention(segment_ids_BT, positions_BT, quantized=False)
    return self.out(self.absorbed_form(heads, heads["c_kv"], heads["k_rope"], attention))

  def document_attention(
      self, segment_ids_BT: jnp.ndarray, positions_BT: jnp.ndarray, quantized: bool = True
  ) -> AttentionFn:
    """Causal attention within each packed document (score/value products quantized per
    `quant.attention` unless `quantized` is False)."""
    def attention(q_BTNH, k_BSKH, v_BSKV):
      return self.self_attention(
          q_BTNH, k_BSKH, v_BSKV, segment_ids_BT, positions_BT, scale=self.scale(),
          quantized=quantized,
      )

    return attention

  def attend_cached(
      self, heads: Heads, segment_ids_BT: jnp.ndarray, positions_BT: jnp.ndarray, cache: Cache
  ) -> tuple[jnp.ndarray, Cache]:
    """Writes the new latents, then the absorbed form over the cache; served quantized models
    (no float up-projection kernels) use the expanded form over the cached latents."""
    del segment_ids_BT  # full cache: padding lands past the pointer, masked until overwritten
    start_B = positions_BT[:, 0]
    cache = {"c_kv": write(cache["c_kv"], heads["c_kv"], start_B),
             "k_rope": write(cache["k_rope"], heads["k_rope"], start_B)}
    dtype = heads["c_kv"].dtype
    c_kv_BSC, k_rope_BSR = cache["c_kv"].astype(dtype), cache["k_rope"].astype(dtype)
    attention = lambda q, k, v: cached_attention(
        q, k, v, positions_BT, self.bias, scale=self.scale()
    )
    floats = "kernel" in self.k_up.variables.get("params", {})
    form = self.absorbed_form if floats else self.expanded_form
    return form(heads, c_kv_BSC, k_rope_BSR, attention), cache

  @staticmethod
  def value_dim(cfg: ml_collections.ConfigDict) -> int:
    return cfg.mla.v_head_dim

  @classmethod
  def attention_case(cls, cfg: ml_collections.ConfigDict, seq_len: int) -> AttentionCase:
    """The expanded form: per-head keys of qk + rope dims, values of v dims."""
    m = cfg.mla
    return AttentionCase(
        seq_len, cfg.num_heads, cfg.num_heads, m.qk_head_dim + m.rope_dim, m.v_head_dim,
        jnp.dtype(cfg.dtype).name, None, position_bias_kind(cfg), False,
    )

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
