"""What one cached call of a model costs by its shape: rows x new tokens per call.

  python -m benchmarks.decode_calls [--workdir RUN] [--shapes 1x1 1x6 4x1 8x1 8x6]
      [--cache 256] [--calls 32] [--rounds 9]

A decode step is 1 token per row, a speculative verification gamma + 1, a batch more rows. Each
shape runs `--calls` cached calls of the model's decode form (efficiency.serving.weights) chained
in one jitted loop over a cache of `--cache` slots, so no dispatch or transfer is timed. Two
arms take turns, compiled in one process: plain XLA (`EFFICIENCY_CPU_TWEAKS=0`, dots throughout)
and the default, with the XLA:CPU tweaks (efficiency.backends.cpu; among them, calls with at
most `REDUCE_QUERIES` queries per KV head multiply-reduce over the heads-major cache). Prints ms
per call (medians over `--rounds`), each shape's cost over a 1 x 1 call, and the speedup of the
default. Without --workdir: configs/default.py at the 4-layer d_model 256 shape, random weights.
"""

import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from configs.default import get_config
from efficiency.backends import cpu
from efficiency.model.transformer import make_model
from efficiency.serving.cache import init_cache
from efficiency.serving.forward import cached_forward
from efficiency.serving.loading import load_model
from efficiency.serving.weights import decode_form


def model_and_params(workdir: str | None) -> tuple[nn.Module, dict]:
  if workdir:
    loaded = load_model(workdir)
    return loaded.model, loaded.params
  config = get_config()
  config.model.update(num_layers=4, d_model=256, num_heads=4, num_kv_heads=2, d_ff=768)
  model = make_model(config)
  tokens = jnp.zeros((1, 8), jnp.int32)
  params = jax.jit(model.init)(jax.random.key(0), tokens, tokens + 1, tokens)["params"]
  return model, nn.unbox(params)


def chained_calls(model: nn.Module, params: dict, rows: int, tokens: int, slots: int,
                  calls: int):
  """The compiled loop of `calls` cached calls of `rows` x `tokens` new tokens each."""
  step_model, unpack = decode_form(model)

  def loop(params):
    params = unpack(params)
    start_B = jnp.full((rows,), slots // 4, jnp.int32)

    def body(i, carry):
      cache, total = carry
      tokens_BT = jnp.full((rows, tokens), 7, jnp.int32) + i
      logits, cache = cached_forward(step_model, params, tokens_BT, cache, start_B + i)
      return cache, total + logits[:, -1, 3].sum()

    carry = (init_cache(step_model.config, rows, slots, 0), jnp.float32(0))
    return jax.lax.fori_loop(0, calls, body, carry)[1]

  return jax.jit(loop).lower(params).compile()


def ms_per_call(compiled: dict, params: dict, rounds: int, calls: int) -> dict:
  """Median ms per call of each compiled loop of `calls` calls, the loops taking turns."""
  times = {key: [] for key in compiled}
  for _ in range(rounds):
    for key, fn in compiled.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(params))
      times[key].append((time.perf_counter() - start) / calls)
  return {key: statistics.median(t) * 1e3 for key, t in times.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir")
  parser.add_argument("--shapes", nargs="+", default=["1x1", "1x6", "4x1", "8x1", "8x6"])
  parser.add_argument("--cache", type=int, default=256)
  parser.add_argument("--calls", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=9)
  args = parser.parse_args()
  model, params = model_and_params(args.workdir)
  shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes]
  compiled = {}
  for form, tweaks in (("dots", False), ("default", True)):
    with cpu.switched(tweaks):  # read when the loop is traced
      for shape in shapes:
        compiled[form, shape] = chained_calls(model, params, *shape, args.cache, args.calls)
  ms = ms_per_call(compiled, params, args.rounds, args.calls)
  base = ms["default", shapes[0]]
  print(f"| rows x tokens | dots ms/call | default ms/call | default / {args.shapes[0]} call "
        "| default speedup |")
  print("|---|---|---|---|---|")
  for shape in shapes:
    dots, default = ms["dots", shape], ms["default", shape]
    print(f"| {shape[0]} x {shape[1]} | {dots:.3f} | {default:.3f} | {default / base:.2f} "
          f"| {dots / default:.2f}x |")


if __name__ == "__main__":
  main()
