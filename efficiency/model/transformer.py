"""Decoder-only transformer: embedding, pre-norm blocks (attention + SwiGLU), final norm, logits."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from efficiency.attention import get_attention
from efficiency.model.layers import Embed, Projection, RMSNorm, SwiGLU
from efficiency.model.moe import MoE
from efficiency.position import get_position

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Block(nn.Module):
  """x + attn(norm(x)), then x + mlp(norm(x)); the MLP is a mixture of experts when
  model.moe.num_experts > 0. With this layer's KV `cache` it also returns the updated cache."""

  config: ml_collections.FrozenConfigDict
  quant: ml_collections.FrozenConfigDict | None = None

  @nn.compact
  def __call__(
      self,
      x_BTD: jnp.ndarray,
      segment_ids_BT: jnp.ndarray,
      positions_BT: jnp.ndarray,
      cache: dict | None = None,
  ) -> tuple[jnp.ndarray, dict | None]:
    cfg = self.config
    dtypes = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))
    x_BTD = nn.with_logical_constraint(
        x_BTD, ("activation_batch", "activation_length", "activation_embed")
    )
    h_BTD = RMSNorm(cfg.norm_eps, name="attn_norm", **dtypes)(x_BTD)
    attention = get_attention(cfg.attention)(cfg, self.quant, name="attn")
    if cache is None:
      x_BTD = x_BTD + attention(h_BTD, segment_ids_BT, positions_BT)
    else:
      y_BTD, cache = attention(h_BTD, segment_ids_BT, positions_BT, cache)
      x_BTD = x_BTD + y_BTD
    h_BTD = RMSNorm(cfg.norm_eps, name="mlp_norm", **dtypes)(x_BTD)
    if cfg.moe.num_experts:
      x_BTD = x_BTD + MoE(cfg, self.quant, name="moe")(h_BTD, segment_ids_BT)
    else:
      x_BTD = x_BTD + SwiGLU(
          cfg.d_model, cfg.d_ff, cfg.init_std, name="mlp", quant=self.quant, **dtypes
      )(h_BTD)
    return x_BTD, cache


class Transformer(nn.Module):
  """The language model. Returns float32 logits [B, T, V].

  `config` is the config's `model` section; `quant` its `quant` section (AQT training modes and
  the weight storage of a served model; None: float). `make_model(config)` builds both from a
  whole config.

  MoE layers sow their load-balancing loss and dropped-choice count into the `moe` collection
  (apply with `mutable=["moe"]` to read them; one entry per layer).

  Decoding passes a KV `cache` (`efficiency.serving.cache.init_cache`: each layer's entries
  [B, S, ...], stacked on a leading layer axis when `scan_layers`) and the new tokens' positions
  (positions_BT[:, 0] is each row's write pointer; segment id 0 marks padding after a row's
  real tokens); the call then returns (logits, new cache).

  Training only: with `scan_layers`, `frozen_layers` = n > 0 runs the first n layers as their own
  scan, params `frozen_layers` (the rest stay `layers`), with its output under stop_gradient, so
  the backward pass skips them (PEFT: nothing at or below them trains). `unroll_layers` unrolls
  the scans (same math; XLA's cost analysis counts a loop body once, so FLOP counts need it).
  Otherwise each layer scan's loop runs `scan_unroll` layers per iteration (same math), in
  training and decoding alike.
  """

  config: ml_collections.FrozenConfigDict
  quant: ml_collections.FrozenConfigDict | None = None
  frozen_layers: int = 0
  unroll_layers: bool = False

  @nn.compact
  def __call__(
      self,
      tokens_BT: jnp.ndarray,
      segment_ids_BT: jnp.ndarray,
      positions_BT: jnp.ndarray,
      cache: dict | None = None,
      logits_at_BK: jnp.ndarray | None = None,
      hidden: bool = False,
  ) -> jnp.ndarray | tuple[jnp.ndarray, dict]:
    """Logits [B, T, V] (with a `cache`, also the updated cache). `logits_at_BK` picks the K
    positions of each row whose logits are computed ([B, K, V]): a prefill needs only its last.
    `hidden` (training, no cache) returns the final-normed hidden states [B, T, D] instead, for
    a loss that applies `LogitsHead` itself (efficiency.train.loss)."""
    cfg = self.config
    dtypes = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))
    embed = Embed(
        cfg.vocab_size, cfg.d_model, cfg.init_std, name="embed", quant=self.quant, **dtypes
    )
    x_BTD = embed(tokens_BT)
    position_embedding = get_position(cfg.position)(cfg).input_embedding()
    if position_embedding is not None:
      x_BTD = position_embedding(x_BTD, positions_BT)

    block = Block
    policy = REMAT_POLICIES[cfg.remat]
    if cfg.remat != "none":
      block = nn.remat(Block, policy=policy, prevent_cse=not cfg.scan_layers)
    args = (segment_ids_BT, positions_BT) + (() if cache is None else (cache,))
    if cfg.scan_layers:
      stack = lambda length, name: nn.scan(
          block,
          variable_axes={"params": 0, "moe": 0},
          split_rngs={"params": True, "quant": True},
          in_axes=(nn.broadcast, nn.broadcast) + (() if cache is None else (0,)),
          length=length,
          unroll=length if self.unroll_layers else min(cfg.get("scan_unroll", 1), length),
          metadata_params={nn.PARTITION_NAME: "layers"},
      )(cfg, self.quant, name=name)
      if self.frozen_layers:
        x_BTD, _ = stack(self.frozen_layers, "frozen_layers")(x_BTD, *args)
        x_BTD = jax.lax.stop_gradient(x_BTD)
      x_BTD, cache = stack(cfg.num_layers - self.frozen_layers, "layers")(x_BTD, *args)
    elif cache is None:
      for i in range(cfg.num_layers):
        x_BTD, _ = block(cfg, self.quant, name=f"layers_{i}")(x_BTD, *args)
    else:
      new_cache = {}
      for i in range(cfg.num_layers):
        name = f"layers_{i}"
        x_BTD, new_cache[name] = block(cfg, self.quant, name=name)(x_BTD, *args[:2], cache[name])
      cache = new_cache

    if logits_at_BK is not None:
      x_BTD = jnp.take_along_axis(x_BTD, logits_at_BK[:, :, None], axis=1)
    x_BTD = RMSNorm(cfg.norm_eps, name="final_norm", **dtypes)(x_BTD)
    if hidden:
      return x_BTD
    logits_BTV = logits_of(cfg, self.quant, x_BTD, embed if cfg.tie_embeddings else None)
    return logits_BTV if cache is None else (logits_BTV, cache)


def logits_of(
    cfg: ml_collections.FrozenConfigDict, quant, x_BTD: jnp.ndarray, embed: Embed | None
) -> jnp.ndarray:
  """float32 logits [B, T, V] of final-normed hidden states: `embed.attend` (tied) or the
  `unembed` projection (untied, built here). Call inside a compact method."""
  dtypes = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))
  if embed is not None:
    logits_BTV = embed.attend(x_BTD)
  else:
    logits_BTV = Projection(
        "btd,dv->btv", (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
        init_std=cfg.init_std, name="unembed", quant=quant, logits=True, **dtypes,
    )(x_BTD)
  logits_BTV = nn.with_logical_constraint(
      logits_BTV, ("activation_batch", "activation_length", "vocab")
  )
  return logits_BTV.astype(jnp.float32)


class LogitsHead(nn.Module):
  """The model's logits projection alone: applied to the params subtree `head_params` picks
  (its `embed` or `unembed`), it gives the logits `Transformer` would of the same hidden states
  (same module paths, so the same quantization and PEFT adapters)."""

  config: ml_collections.FrozenConfigDict
  quant: ml_collections.FrozenConfigDict | None = None

  @nn.compact
  def __call__(self, x_BTD: jnp.ndarray) -> jnp.ndarray:
    cfg = self.config
    embed = None
    if cfg.tie_embeddings:
      embed = Embed(cfg.vocab_size, cfg.d_model, cfg.init_std, name="embed", quant=self.quant,
                    dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))
    return logits_of(cfg, self.quant, x_BTD, embed)


def head_params(params: dict, config: ml_collections.FrozenConfigDict) -> dict:
  """The part of a Transformer's params `LogitsHead` applies."""
  name = "embed" if config.tie_embeddings else "unembed"
  return {name: params[name]}


def make_model(config: ml_collections.ConfigDict) -> Transformer:
  """The Transformer of a whole config: its `model` section, quantized as its `quant` section
  says (a config without one gives a float model)."""
  quant = config.get("quant")
  return Transformer(
      ml_collections.FrozenConfigDict(config.model),
      None if quant is None else ml_collections.FrozenConfigDict(quant),
  )
