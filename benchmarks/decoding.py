"""Decoding benchmarks on trained workdirs: CoS against standard collaborative decoding, a gamma
sweep, plain speculative decoding against the target alone, and cached decode steps against
forward passes.

  python benchmarks/decoding.py --default DIR --seed1 DIR --small DIR
      [--prompts 8 --prompt_tokens 64 --max_new_tokens 64 --out decoding.json]

- `cos`: weighted ensemble of default + seed1 (lambda 0.5) and contrastive decoding of default
  (expert) and small (amateur, mu 0.1), at temperatures 0 and 1, gamma 5: standard, naive and
  CoS (alternate) on the same validation prompts, interleaved prompt by prompt.
- `gamma`: the same at temperature 0 for gamma 1, 2, 3, 5, 8.
- `speculative`: small drafts for default vs default alone, temperatures 0 and 1, gamma 3 and 5.
- `limit`: default model: the generation loop's tokens/s at batch 1 and 8 (greedy, prefill
  included), the jitted one-token cached step alone, and one forward pass over all the tokens
  (prompt + new) in parallel.
All numbers are ratios measured side by side in one process.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from efficiency.serving.collaborative import Contrastive, Single, WeightedEnsemble
from efficiency.serving.compare import compare
from efficiency.serving.generate import generate
from efficiency.serving.loading import check_same_tokenizer, load_model
from efficiency.serving.prompts import validation_prompts
from efficiency.serving.runner import Runner
from efficiency.serving.sampling import Sampling
from efficiency.serving.speculation import Engine
from efficiency.train.inputs import tokenizer_of

GAMMAS = (1, 2, 3, 5, 8)


def row(label: str, report: dict) -> dict:
  out = {"setting": label}
  for name in ("standard", "naive", "cos"):
    if name in report:
      r = report[name]
      out[name] = {k: r[k] for k in ("tokens_per_s", "speedup", "acceptance", "tokens_per_call")}
  out["same_tokens_as_standard"] = report["same_tokens_as_standard"]
  return out


def limit(model, params, prompt: np.ndarray, new: int, rounds: int = 5) -> dict:
  """Batch-1 decode loop vs the bare jitted step vs one prefill pass over the same tokens."""
  greedy = Sampling(0.0)
  generate(model, params, [prompt], new, greedy, None)  # compile
  generate(model, params, [prompt] * 8, new, greedy, None)
  loop_s, batch8_s, step_s, prefill_s = [], [], [], []
  length = len(prompt) + new
  tokens = np.random.default_rng(0).integers(3, 100, size=(1, length)).astype(np.int32)
  step_runner = Runner(model, params, 1, length + 40)
  prefill_runner = Runner(model, params, 1, length + 40)
  step_runner.feed(tokens[:, :1], np.array([0]))
  prefill_runner.feed(tokens, np.array([0]))
  for _ in range(rounds):
    start = time.perf_counter()
    generate(model, params, [prompt], new, greedy, None)
    loop_s.append((time.perf_counter() - start) / new)
    start = time.perf_counter()
    generate(model, params, [prompt] * 8, new, greedy, None)
    batch8_s.append((time.perf_counter() - start) / (8 * new))
    start = time.perf_counter()
    for i in range(new):
      step_runner.feed(tokens[:, i : i + 1], np.array([len(prompt) + i]))
    step_s.append((time.perf_counter() - start) / new)
    start = time.perf_counter()
    prefill_runner.feed(tokens, np.array([0]))
    prefill_s.append((time.perf_counter() - start) / length)
  loop, batch8, step, prefill = map(statistics.median, (loop_s, batch8_s, step_s, prefill_s))
  return {
      "decode_loop_tokens_per_s": 1 / loop,
      "decode_loop_batch8_tokens_per_s": 1 / batch8,
      "cached_step_tokens_per_s": 1 / step,
      "prefill_tokens_per_s": 1 / prefill,
      "decode_loop_over_step": step / loop,
      "prefill_over_decode_loop": loop / prefill,
      "tokens_per_pass": length,
  }


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--default", required=True)
  parser.add_argument("--seed1", required=True)
  parser.add_argument("--small", required=True)
  parser.add_argument("--prompts", type=int, default=8)
  parser.add_argument("--prompt_tokens", type=int, default=64)
  parser.add_argument("--max_new_tokens", type=int, default=64)
  parser.add_argument("--parts", default="cos,gamma,speculative,limit")
  parser.add_argument("--out", default="decoding.json")
  args = parser.parse_args()
  names = [args.default, args.seed1, args.small]
  default, seed1, small = ((m.model, m.params, m.config) for m in map(load_model, names))
  check_same_tokenizer([default[2], seed1[2], small[2]], names)
  tokenizer = tokenizer_of(default[2])
  prompts = validation_prompts(default[2], tokenizer, args.prompts, args.prompt_tokens)
  max_len = args.prompt_tokens + args.max_new_tokens + max(GAMMAS) + 40
  new, eos = args.max_new_tokens, tokenizer.eos_id
  results: dict[str, list | dict] = {}
  parts = args.parts.split(",")

  def run(label, engine, gamma, proposer, methods=None):
    kw = {} if methods is None else {"methods": methods}
    report = compare(engine, prompts, new, gamma, proposer, 0, eos, **kw)
    print(json.dumps(row(label, report)), flush=True)
    return row(label, report)

  pairs = {
      "we": (lambda s: WeightedEnsemble((0.5, 0.5), s), [default[:2], seed1[:2]], 0),
      "cd": (lambda s: Contrastive(0.1, s), [default[:2], small[:2]], 1),
  }
  if "cos" in parts:
    results["cos"] = [
        run(f"{kind} T={t} gamma=5", Engine(make(Sampling(t)), members, max_len), 5, proposer)
        for kind, (make, members, proposer) in pairs.items()
        for t in (0.0, 1.0)
    ]
  if "gamma" in parts:
    results["gamma"] = [
        run(f"{kind} T=0 gamma={g}", Engine(make(Sampling(0.0)), members, max_len), g, proposer)
        for kind, (make, members, proposer) in pairs.items()
        for g in GAMMAS
    ]
  if "speculative" in parts:
    results["speculative"] = []
    for t in (0.0, 1.0):
      s = Sampling(t)
      engine = Engine(Single(s), [default[:2]], max_len, draft=small[:2], draft_sampling=s)
      for g in (3, 5):
        results["speculative"].append(run(
            f"small drafts for default T={t} gamma={g}", engine, g, 0,
            {"standard": "standard", "naive": "naive"},
        ))
  if "limit" in parts:
    results["limit"] = limit(default[0], default[1], prompts[0], new)
    print(json.dumps(results["limit"]), flush=True)
  Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
