"""Decoding benchmarks on trained workdirs, every part side by side in one process (ratios).

  python benchmarks/decoding.py --default DIR --small DIR [--seed1 DIR]
      [--prompts 8 --prompt_tokens 64 --max_new_tokens 64 --parts limit,speculative,quant,cos
       --out decoding.json]

- `limit`: default model, greedy: the on-device generation (one jitted program per request,
  prefill included) at batch 1 and 8, against the host loop it replaced (one jitted step per
  token, logits read to the host, argmax there) and the jitted one-token cached step alone
  (chained on device, read once: the floor of any per-token loop).
- `speculative`: the small model drafts for the default one, on device and batched, against the
  default model alone (on-device generation) at temperatures 0 and 1, gamma 3 and 5, batch 1, 4
  and 8 (the prompts cycled to fill the batch); acceptance and target calls per token.
- `quant`: greedy on-device decode of int8 (AQT serve) and int4 (packed) weights against bf16,
  batch 1 and 8.
- `cos`: collaborative decoding (host engine, batch 1): standard, naive and CoS (alternate);
  contrastive decoding of default (expert) and small (amateur, mu 0.1) and, with --seed1, the
  weighted ensemble of default + seed1; temperature 0, gamma 5.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import numpy as np

from efficiency.serving import export
from efficiency.serving.collaborative import Contrastive, WeightedEnsemble
from efficiency.serving.compare import compare
from efficiency.serving.generate import run
from efficiency.serving.loading import check_same_tokenizer, load_model
from efficiency.serving.prompts import validation_prompts
from efficiency.serving.runner import Runner, compiled_forward
from efficiency.serving.sampling import Sampling
from efficiency.serving.speculation import Engine
from efficiency.serving.speculative import speculate
from efficiency.train.inputs import tokenizer_of

GREEDY = Sampling(0.0)


def median_time(fn, rounds: int) -> float:
  """Median seconds of `fn()` over `rounds` calls after one warm-up call."""
  fn()
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def median_decode(rounds: int, fn, *args):
  """The last result of `fn(*args)` (a Generated or Speculated) and the median of its decode_s
  (compilation excluded) over `rounds` calls after one warm-up call."""
  fn(*args)
  results = [fn(*args) for _ in range(rounds)]
  return results[-1], statistics.median(r.decode_s for r in results)


def batch_of(prompts: list[np.ndarray], b: int) -> list[np.ndarray]:
  return [prompts[i % len(prompts)] for i in range(b)]


def limit(model, params, prompt: np.ndarray, new: int, rounds: int) -> dict:
  """Tokens/s of the on-device loop (batch 1, 8), the host loop and the bare step."""
  def host_loop():
    runner = Runner(model, params, 1, len(prompt) + new + 32)
    logits = runner.feed(prompt[None], np.zeros(1, np.int32))[:, -1]
    for i in range(new - 1):
      token = np.argmax(logits, -1).astype(np.int32)[:, None]
      logits = runner.feed(token, np.array([len(prompt) + i], np.int32))[:, 0]

  forward = compiled_forward(model)
  step_runner = Runner(model, params, 1, len(prompt) + new + 32)
  token = jax.device_put(np.ones((1, 1), np.int32))
  starts = [jax.device_put(np.array([len(prompt) + i], np.int32)) for i in range(new)]

  def step_alone():
    cache = step_runner.cache
    for start in starts:
      logits, cache = forward(params, token, cache, start)
    step_runner.cache = cache
    jax.block_until_ready(logits)

  seconds = {"device_b1": median_decode(rounds, run, model, params, [prompt], new, GREEDY,
                                       None)[1] / new,
             "device_b8": median_decode(rounds, run, model, params, [prompt] * 8, new, GREEDY,
                                       None)[1] / (8 * new),
             "host_loop_b1": median_time(host_loop, rounds) / new,
             "step_alone_b1": median_time(step_alone, rounds) / new}
  out = {f"{k}_tokens_per_s": 1 / v for k, v in seconds.items()}
  out.update(
      device_over_step_alone=seconds["step_alone_b1"] / seconds["device_b1"],
      device_over_host_loop=seconds["host_loop_b1"] / seconds["device_b1"],
      batch8_over_batch1=seconds["device_b1"] / seconds["device_b8"],
  )
  return out


def speculative(target, draft, prompts, new: int, eos: int, rounds: int) -> list[dict]:
  rows = []
  for t in (0.0, 1.0):
    sampling = Sampling(t)
    for b in (1, 4, 8):
      chunk = batch_of(prompts, b)
      plain, alone = median_decode(rounds, run, *target, chunk, new, sampling, eos)
      alone_tokens = sum(map(len, plain.tokens))
      for gamma in (3, 5):
        spec, spec_s = median_decode(rounds, speculate, target, draft, chunk, new, sampling,
                                     gamma, eos)
        tokens = sum(map(len, spec.tokens))
        row = {"temperature": t, "batch": b, "gamma": gamma,
               "speedup": (tokens / spec_s) / (alone_tokens / alone),
               "acceptance": spec.acceptance,
               "tokens_per_target_call": tokens / b / spec.rounds,
               "target_alone_tokens_per_s": alone_tokens / alone,
               "speculative_tokens_per_s": tokens / spec_s}
        print(json.dumps(row), flush=True)
        rows.append(row)
  return rows


def quant(trained, prompts, new: int, rounds: int) -> list[dict]:
  models = {"bf16": export.cast_float(trained, "bfloat16"),
            "int8": export.convert(trained, 8, "bfloat16"),
            "int4": export.convert(trained, 4, "bfloat16")}
  rows = []
  for b in (1, 8):
    chunk = batch_of(prompts, b)
    seconds = {name: median_decode(rounds, run, m.model, m.params, chunk, new, GREEDY, None)[1]
               for name, m in models.items()}
    for name, s in seconds.items():
      row = {"weights": name, "batch": b, "tokens_per_s": b * new / s,
             "over_bf16": seconds["bf16"] / s,
             "weight_bytes": export.weight_bytes(models[name].params)}
      print(json.dumps(row), flush=True)
      rows.append(row)
  return rows


def cos(pairs: dict, prompts, new: int, eos: int, max_len: int) -> list[dict]:
  rows = []
  for label, (collab, members, proposer) in pairs.items():
    report = compare(Engine(collab, members, max_len), prompts, new, 5, proposer, 0, eos)
    row = {"setting": label, **{
        name: {k: report[name][k] for k in ("tokens_per_s", "speedup", "acceptance",
                                            "tokens_per_call")}
        for name in ("standard", "naive", "cos")},
        "same_tokens_as_standard": report["same_tokens_as_standard"]}
    print(json.dumps(row), flush=True)
    rows.append(row)
  return rows


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--default", required=True)
  parser.add_argument("--small", required=True)
  parser.add_argument("--seed1")
  parser.add_argument("--prompts", type=int, default=8)
  parser.add_argument("--prompt_tokens", type=int, default=64)
  parser.add_argument("--max_new_tokens", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--parts", default="limit,speculative,quant,cos")
  parser.add_argument("--out", default="decoding.json")
  args = parser.parse_args()
  names = [args.default, args.small] + ([args.seed1] if args.seed1 else [])
  loaded = [load_model(n) for n in names]
  check_same_tokenizer([m.config for m in loaded], names)
  default, small = loaded[0], loaded[1]
  tokenizer = tokenizer_of(default.config)
  prompts = validation_prompts(default.config, tokenizer, args.prompts, args.prompt_tokens)
  new, eos, parts = args.max_new_tokens, tokenizer.eos_id, args.parts.split(",")
  target, draft = (default.model, default.params), (small.model, small.params)
  results: dict = {"settings": vars(args)}
  if "limit" in parts:
    results["limit"] = limit(*target, prompts[0], new, args.rounds)
    print(json.dumps(results["limit"]), flush=True)
  if "speculative" in parts:
    results["speculative"] = speculative(target, draft, prompts, new, eos, args.rounds)
  if "quant" in parts:
    results["quant"] = quant(default, prompts, new, args.rounds)
  if "cos" in parts:
    greedy = Sampling(0.0)
    pairs = {"cd T=0 gamma=5": (Contrastive(0.1, greedy), [target, draft], 1)}
    if args.seed1:
      seed1 = (loaded[2].model, loaded[2].params)
      pairs["we T=0 gamma=5"] = (WeightedEnsemble((0.5, 0.5), greedy), [target, seed1], 0)
    results["cos"] = cos(pairs, prompts, new, eos, args.prompt_tokens + new + 48)
  Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
