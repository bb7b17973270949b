"""Model FLOPs per token, the numerator of MFU.

  flops_per_token = 6 * matmul_params + layers * attention_score_flops(seq_len)

`matmul_params` counts every weight used in a matmul: per layer the attention variant's own
projections plus the SwiGLU MLP (3 * d_model * d_ff; for a mixture of experts the router and the
top_k active experts only, see `MoE.matmul_params`), and once the logits projection
(d_model * vocab, tied or not). The embedding lookup is a gather and is not counted. The factor 6
is 2 FLOPs per multiply-add times 3 for the forward and the two backward matmuls. The attention
variant supplies its score FLOPs; for softmax attention under a causal mask that is
6 * seq_len * heads * head_dim per layer (half of the full square).
"""

import ml_collections

from efficiency.attention import get_attention
from efficiency.model.moe import MoE


def matmul_params(cfg: ml_collections.ConfigDict) -> int:
  """Weights used in matmuls for one token's forward pass."""
  attention = get_attention(cfg.attention)
  mlp = MoE.matmul_params(cfg) if cfg.moe.num_experts else 3 * cfg.d_model * cfg.d_ff
  per_layer = attention.matmul_params(cfg) + mlp
  return cfg.num_layers * per_layer + cfg.d_model * cfg.vocab_size


def flops_per_token(cfg: ml_collections.ConfigDict, seq_len: int) -> int:
  """Training FLOPs (forward + backward) per token at sequence length `seq_len`."""
  attention = get_attention(cfg.attention)
  return 6 * matmul_params(cfg) + cfg.num_layers * attention.score_flops_per_token(cfg, seq_len)
