"""The efficiency study's pretraining shapes: `--config=configs/efficientllm.py:SIZE[-VARIANT...]`.

SIZE is 0.5b, 1.5b or 3b; each VARIANT suffix switches on one of the study's variants at its
settings: `mqa` (1 KV head), `mla` (KV latent d_model / 8, query latent 3 d_model / 8, qk head dim
128 plus a 64-dim decoupled rope key, v head dim 128), `nsa` (window 128, compression block 64
with stride 32, 4 selected blocks of 64), `moe` (8 experts, top-2, aux loss 0.01, dropless;
capacity 1.25 with dispatch=capacity), or a position encoding (`sinusoidal`, `learned`,
`relative`, `alibi`, `none`); for example `1.5b-mla`, `1.5b-moe`, `0.5b-nsa-alibi`.

SwiGLU, RMSNorm eps 1e-6, QKV bias, RoPE base 1e6, tied embeddings over the 151,936-token Qwen2.5
vocabulary, AdamW (0.9, 0.95), weight decay 0.1, clip 1.0, lr 1e-4 -> 1e-5 cosine, init std
0.008, bfloat16 compute. Training these needs a GPU or TPU.
"""

import ml_collections

from configs import default

# size: (layers, d_model, heads, kv heads, d_ff)
SHAPES = {
    "0.5b": (24, 896, 14, 2, 4864),
    "1.5b": (28, 1536, 12, 2, 8960),
    "3b": (36, 2048, 16, 2, 11008),
}
NOMINAL_PARAMS = {"0.5b": 0.5e9, "1.5b": 1.5e9, "3b": 3.0e9}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config for `arg` = SIZE[-VARIANT...] (default 0.5b)."""
  size, *variants = (arg or "0.5b").lower().split("-")
  if size not in SHAPES:
    raise ValueError(f"efficientllm size {arg!r} is unknown; valid choices: {sorted(SHAPES)}")
  layers, d_model, heads, kv_heads, d_ff = SHAPES[size]
  c = default.get_config()
  c.steps = 20_000
  c.batch_size = 256
  c.seq_len = 2048
  c.target_loss = 3.0
  c.eval_every = 1000
  c.eval_batches = 16
  c.log_every = 10
  c.checkpoint_every = 1000
  c.model.rope.base = 1e6
  c.model.update(
      num_layers=layers,
      d_model=d_model,
      num_heads=heads,
      num_kv_heads=kv_heads,
      d_ff=d_ff,
      vocab_size=151_936,
      attention="gqa",
      position="rope",
      qkv_bias=True,
      tie_embeddings=True,
      norm_eps=1e-6,
      init_std=0.008,
      remat="full",
      loss_chunk=256,  # no [B, T, V] float32 logits (BENCHMARKS.md, "The chunked loss")
      param_dtype="float32",
      dtype="bfloat16",
  )
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  c.optimizer.update(
      lr=1e-4, min_lr_ratio=0.1, warmup_steps=500, b1=0.9, b2=0.95, weight_decay=0.1,
      grad_clip=1.0,
  )
  # The runnable default corpus, byte-tokenized; a 151,936-token tokenizer over a real web corpus
  # (FineWeb-Edu, as in the study) plugs in through `data.*`.
  c.data.tokenizer = "bytes"
  for variant in variants:
    if variant not in VARIANTS:
      raise ValueError(
          f"efficientllm variant {variant!r} is unknown; valid choices: {sorted(VARIANTS)}"
      )
    VARIANTS[variant](c.model)
  return c


def _mla(m: ml_collections.ConfigDict) -> None:
  latent = m.d_model // 8
  m.attention = "mla"
  m.mla.update(
      kv_latent_dim=latent, q_latent_dim=3 * latent, rope_dim=64, qk_head_dim=128, v_head_dim=128
  )


def _nsa(m: ml_collections.ConfigDict) -> None:
  m.attention = "nsa"
  m.nsa.update(block_size=64, stride=32, select_size=64, top_n=4, window=128)


def _moe(m: ml_collections.ConfigDict) -> None:
  m.moe.update(num_experts=8, top_k=2, capacity_factor=1.25, aux_loss_weight=0.01)


def _position(name: str):
  return lambda m: setattr(m, "position", name)


VARIANTS = {
    "mqa": lambda m: setattr(m, "attention", "mqa"),
    "mla": _mla,
    "nsa": _nsa,
    "moe": _moe,
    **{p: _position(p) for p in ("sinusoidal", "learned", "relative", "alibi", "none")},
}
