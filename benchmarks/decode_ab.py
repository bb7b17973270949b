"""Greedy on-device decoding in two forms, in one process (both programs compiled side by side,
run in turns; ratios):
- `--compare argmax`: `jnp.argmax` against `device_sampling.argmax` (two plain reductions);
- `--compare key_layout`: the key cache as [B, K, S, H] against [B, K, H, S], slots last
  (`gqa.KEYS_SLOTS_LAST`);
- `--compare prefill_logits`: the prefill's logits at every prompt position, the last real one
  then picked, against the logits at the last one only (`Transformer(..., logits_at_BK=...)`).

  python benchmarks/decode_ab.py [--compare argmax] [--shapes default,4x512] [--batches 1,8]
      [--rounds 5] [--new_tokens 64] [--prompt_tokens 64]

Models have random weights (configs/default.py at each shape; decoding speed does not depend on
the values: every request generates exactly --new_tokens tokens, no EOS stop), prompts are
random token ids. Prints one JSON line per shape and batch, then batch 8 over batch 1 per arm.
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
from efficiency.attention import gqa
from efficiency.model.transformer import make_model
from efficiency.serving import device_sampling
from efficiency.serving import generate as generate_lib
from efficiency.serving.runner import cached_forward
from efficiency.serving.sampling import Sampling
from efficiency.workdir.restore import TrainedModel

SHAPES = {
    "default": {},
    "4x512": {"num_layers": 4, "d_model": 512, "num_heads": 8, "num_kv_heads": 4, "d_ff": 1536},
}
TWO_REDUCTIONS = device_sampling.argmax


def _set_argmax(argmax) -> None:
  device_sampling.argmax = argmax


def _set_keys_slots_last(slots_last: bool) -> None:
  gqa.KEYS_SLOTS_LAST = slots_last


def _logits_everywhere(model, params, tokens_BT, cache, start_B, lengths_B=None,
                       logits_at_BK=None):
  """`cached_forward` as it was: logits at every position, then those at `logits_at_BK`."""
  logits_BTV, cache = cached_forward(model, params, tokens_BT, cache, start_B, lengths_B)
  if logits_at_BK is not None:
    logits_BTV = jnp.take_along_axis(logits_BTV, logits_at_BK[:, :, None], axis=1)
  return logits_BTV, cache


def _set_cached_forward(forward) -> None:
  generate_lib.cached_forward = forward


# Per comparison: {arm: setting applied while its program is traced}, the first arm the baseline.
# After tracing, the defaults (the second arm of each) are put back.
COMPARISONS = {
    "argmax": {
        "jnp.argmax": lambda: _set_argmax(
            lambda x_BV: jnp.argmax(x_BV, axis=-1).astype(jnp.int32)),
        "two reductions": lambda: _set_argmax(TWO_REDUCTIONS),
    },
    "key_layout": {
        "keys [B, K, S, H]": lambda: _set_keys_slots_last(False),
        "keys [B, K, H, S]": lambda: _set_keys_slots_last(True),
    },
    "prefill_logits": {
        "every position": lambda: _set_cached_forward(_logits_everywhere),
        "last position": lambda: _set_cached_forward(cached_forward),
    },
}


def _defaults() -> None:
  _set_argmax(TWO_REDUCTIONS)
  _set_keys_slots_last(True)
  _set_cached_forward(cached_forward)


def random_model(shape: str) -> TrainedModel:
  """configs/default.py's model at `shape`, randomly initialized."""
  config = get_config()
  config.model.update(SHAPES[shape])
  model = make_model(config)
  tokens = jnp.zeros((1, 8), jnp.int32)
  params = jax.jit(lambda: model.init(jax.random.key(0), tokens, tokens + 1, tokens))()
  return TrainedModel(config, model, nn.meta.unbox(params["params"]), step=0, workdir=None)


def compiled_request(m: TrainedModel, prompts: list[np.ndarray], new: int, setting) -> tuple:
  """The greedy request's compiled program, traced under `setting`, and its arguments."""
  setting()
  generate_lib._EXECUTABLES.clear()
  generate_lib.program.cache_clear()
  args, max_len = generate_lib._request(m.params, prompts, new, None, 0, 0)
  compiled, _ = generate_lib.executable(
      generate_lib.program(m.model, Sampling(0.0), new, max_len), *args)
  _defaults()
  return compiled, args


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--compare", default="argmax", choices=sorted(COMPARISONS))
  parser.add_argument("--shapes", default="default,4x512")
  parser.add_argument("--batches", default="1,8")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--prompt_tokens", type=int, default=64)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  shapes = args.shapes.split(",")
  batches = [int(b) for b in args.batches.split(",")]
  prompts = [rng.integers(1, 4000, size=args.prompt_tokens).astype(np.int32)
             for _ in range(max(batches))]
  arms = COMPARISONS[args.compare]
  base, other = arms
  programs = {}
  for shape in shapes:
    m = random_model(shape)
    for b in batches:
      for arm, setting in arms.items():
        programs[(shape, b, arm)] = compiled_request(m, prompts[:b], args.new_tokens, setting)
  seconds = {key: [] for key in programs}
  tokens = {}
  for turn in range(args.rounds + 1):  # one warm-up turn
    for key, (compiled, request) in programs.items():
      start = time.perf_counter()
      tokens[key] = jax.device_get(compiled(*request))
      if turn:
        seconds[key].append(time.perf_counter() - start)
  rate = {k: k[1] * args.new_tokens / statistics.median(v) for k, v in seconds.items()}
  for shape in shapes:
    for b in batches:
      old, new = rate[(shape, b, base)], rate[(shape, b, other)]
      print(json.dumps({
          "shape": shape, "batch": b, f"{base} tokens_per_s": old,
          f"{other} tokens_per_s": new, "speedup": new / old,
          "same_tokens": bool(np.array_equal(tokens[(shape, b, base)],
                                             tokens[(shape, b, other)]))}),
          flush=True)
    hi, lo = max(batches), min(batches)
    for arm in arms:
      print(json.dumps({"shape": shape, "arm": arm, f"batch{hi}_over_batch{lo}":
                        rate[(shape, hi, arm)] / rate[(shape, lo, arm)]}), flush=True)


if __name__ == "__main__":
  main()
