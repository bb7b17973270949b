"""Greedy on-device decoding with one decode-program choice reverted, against the current one,
in one process (compiled side by side, run in turns; ratios).

  python benchmarks/decode_ab.py [--shapes default,4x512] [--batches 1,8] [--rounds 5]
      [--new_tokens 64] [--prompt_tokens 64]

Choices (`--choices`, each against the current program):
- `argmax`: greedy with `jnp.argmax` instead of `device_sampling.argmax` (two plain reductions);
- `table`: the tied table multiplied as stored, [vocab, d_model], instead of transposed once
  per request to [d_model, vocab] (`serving.unpack`).
Models have random weights (configs/default.py at each shape; decoding speed does not depend
on the values: every request generates exactly --new_tokens tokens, no EOS stop), prompts are
random token ids. Prints one JSON line per shape, batch and choice.
"""

import argparse
import json
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from configs.default import get_config
from efficiency.model.transformer import make_model
from efficiency.serving import device_sampling, unpack
from efficiency.serving import generate as generate_lib
from efficiency.serving.sampling import Sampling
from efficiency.workdir.restore import TrainedModel

SHAPES = {
    "default": {},
    "4x512": {"num_layers": 4, "d_model": 512, "num_heads": 8, "num_kv_heads": 4, "d_ff": 1536},
}
WHERE = {"argmax": (device_sampling, "argmax"), "table": (unpack, "_transposed_table")}
CURRENT = {choice: getattr(*where) for choice, where in WHERE.items()}
REVERTED = {"argmax": lambda x_BV: jnp.argmax(x_BV, axis=-1).astype(jnp.int32),
            "table": lambda params: params}


def random_model(shape: str) -> TrainedModel:
  """configs/default.py's model at `shape`, randomly initialized."""
  config = get_config()
  config.model.update(SHAPES[shape])
  model = make_model(config)
  tokens = jnp.zeros((1, 8), jnp.int32)
  params = jax.jit(lambda: model.init(jax.random.key(0), tokens, tokens + 1, tokens))()
  return TrainedModel(config, model, nn.meta.unbox(params["params"]), step=0, workdir=None)


def compiled_request(m: TrainedModel, prompts: list[np.ndarray], new: int, choice: str,
                     fn) -> tuple:
  """The greedy request's compiled program with `choice` set to `fn`, and its arguments."""
  setattr(*WHERE[choice], fn)
  generate_lib._EXECUTABLES.clear()
  generate_lib.program.cache_clear()
  args, max_len = generate_lib._request(m.params, prompts, new, None, 0, 0)
  program = generate_lib.program(m.model, Sampling(0.0), new, max_len)
  compiled, _ = generate_lib.executable(program, *args)
  setattr(*WHERE[choice], CURRENT[choice])
  return compiled, args


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--shapes", default="default,4x512")
  parser.add_argument("--batches", default="1,8")
  parser.add_argument("--choices", default="argmax,table")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--prompt_tokens", type=int, default=64)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  batches = [int(b) for b in args.batches.split(",")]
  prompts = [rng.integers(1, 4000, size=args.prompt_tokens).astype(np.int32)
             for _ in range(max(batches))]
  programs = {}
  for shape in args.shapes.split(","):
    m = random_model(shape)
    for b in batches:
      for choice in args.choices.split(","):
        for arm, fn in (("reverted", REVERTED[choice]), ("current", CURRENT[choice])):
          programs[(shape, b, choice, arm)] = compiled_request(m, prompts[:b], args.new_tokens,
                                                               choice, fn)
  seconds = {key: [] for key in programs}
  tokens = {}
  for turn in range(args.rounds + 1):  # one warm-up turn
    for key, (compiled, request) in programs.items():
      start = time.perf_counter()
      tokens[key] = jax.device_get(compiled(*request))
      if turn:
        seconds[key].append(time.perf_counter() - start)
  rate = {k: k[1] * args.new_tokens / statistics.median(v) for k, v in seconds.items()}
  for shape, b, choice, arm in programs:
    if arm == "current":
      before = rate[(shape, b, choice, "reverted")]
      print(json.dumps({
          "shape": shape, "batch": b, "choice": choice,
          "reverted_tokens_per_s": before, "current_tokens_per_s": rate[(shape, b, choice, arm)],
          "speedup": rate[(shape, b, choice, arm)] / before,
          "same_tokens": bool(np.array_equal(tokens[(shape, b, choice, arm)],
                                             tokens[(shape, b, choice, "reverted")]))}),
          flush=True)
  for shape in args.shapes.split(","):
    if len(batches) > 1:
      hi, lo = max(batches), min(batches)
      for choice in args.choices.split(","):
        for arm in ("reverted", "current"):
          print(json.dumps({"shape": shape, "choice": choice, "arm": arm,
                            f"batch{hi}_over_batch{lo}": rate[(shape, hi, choice, arm)]
                            / rate[(shape, lo, choice, arm)]}), flush=True)


if __name__ == "__main__":
  main()
