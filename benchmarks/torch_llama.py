"""A plain PyTorch Llama-style decoder train step, driven over stdin by benchmarks.torch_compare.

  python benchmarks/torch_llama.py --layers 4 --d_model 256 --heads 4 --kv_heads 2 --d_ff 768
      --vocab 4096 --seq_len 128 --batch 16

The model matches configs/default.py's: token embedding tied to the output, pre-norm blocks of
RMSNorm, grouped-query attention with rotate-half RoPE through `scaled_dot_product_attention`
(causal), SwiGLU MLP, final RMSNorm; AdamW with gradient clipping at 1.0; float32, eager. It
reads a step count per line and answers with the seconds those steps took. Needs torch (never a
dependency of the project: install it in a separate environment).
"""

import argparse
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
  def __init__(self, d: int, eps: float = 1e-6):
    super().__init__()
    self.weight, self.eps = nn.Parameter(torch.ones(d)), eps

  def forward(self, x):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope(x, cos, sin):
  half = x.shape[-1] // 2
  rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
  return x * cos + rotated * sin


class Block(nn.Module):
  def __init__(self, d: int, heads: int, kv_heads: int, d_ff: int):
    super().__init__()
    self.heads, self.kv_heads, self.head_dim = heads, kv_heads, d // heads
    self.attn_norm, self.mlp_norm = RMSNorm(d), RMSNorm(d)
    self.q = nn.Linear(d, d, bias=False)
    self.kv = nn.Linear(d, 2 * kv_heads * self.head_dim, bias=False)
    self.o = nn.Linear(d, d, bias=False)
    self.gate_up = nn.Linear(d, 2 * d_ff, bias=False)
    self.down = nn.Linear(d_ff, d, bias=False)

  def forward(self, x, cos, sin):
    b, t, _ = x.shape
    h = self.attn_norm(x)
    q = self.q(h).view(b, t, self.heads, self.head_dim).transpose(1, 2)
    k, v = self.kv(h).view(b, t, 2, self.kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k = rope(q, cos, sin), rope(k, cos, sin)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    x = x + self.o(out.transpose(1, 2).reshape(b, t, -1))
    gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
    return x + self.down(F.silu(gate) * up)


class Decoder(nn.Module):
  def __init__(self, args):
    super().__init__()
    self.embed = nn.Embedding(args.vocab, args.d_model)
    self.blocks = nn.ModuleList(
        Block(args.d_model, args.heads, args.kv_heads, args.d_ff) for _ in range(args.layers)
    )
    self.norm = RMSNorm(args.d_model)
    head_dim = args.d_model // args.heads
    inv = 1.0 / (10_000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.outer(torch.arange(args.seq_len).float(), inv)
    angles = torch.cat([angles, angles], dim=-1)
    self.register_buffer("cos", angles.cos(), persistent=False)
    self.register_buffer("sin", angles.sin(), persistent=False)

  def forward(self, tokens):
    x = self.embed(tokens)
    for block in self.blocks:
      x = block(x, self.cos, self.sin)
    return self.norm(x) @ self.embed.weight.T


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  for name, default in (("layers", 4), ("d_model", 256), ("heads", 4), ("kv_heads", 2),
                        ("d_ff", 768), ("vocab", 4096), ("seq_len", 128), ("batch", 16)):
    parser.add_argument(f"--{name}", type=int, default=default)
  args = parser.parse_args()
  torch.manual_seed(0)
  model = Decoder(args)
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95),
                                weight_decay=0.1)
  tokens = torch.randint(1, args.vocab, (args.batch, args.seq_len + 1))
  inputs, targets = tokens[:, :-1], tokens[:, 1:]

  def step():
    logits = model(inputs)
    loss = F.cross_entropy(logits.reshape(-1, args.vocab), targets.reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss

  step()
  print(f"ready {sum(p.numel() for p in model.parameters())}", flush=True)
  for line in sys.stdin:
    start = time.perf_counter()
    for _ in range(int(line)):
      step()
    print(time.perf_counter() - start, flush=True)


if __name__ == "__main__":
  main()
