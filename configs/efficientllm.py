"""The efficiency study's pretraining shapes: `--config=configs/efficientllm.py:0.5b|1.5b|3b`.

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
  """Returns the config for size `arg` (one of 0.5b, 1.5b, 3b; default 0.5b)."""
  size = (arg or "0.5b").lower()
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
  c.model.update(
      num_layers=layers,
      d_model=d_model,
      num_heads=heads,
      num_kv_heads=kv_heads,
      d_ff=d_ff,
      vocab_size=151_936,
      attention="gqa",
      position="rope",
      rope_base=1e6,
      qkv_bias=True,
      tie_embeddings=True,
      norm_eps=1e-6,
      init_std=0.008,
      remat="full",
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
  return c
