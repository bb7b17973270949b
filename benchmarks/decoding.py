"""Decoding benchmarks on trained workdirs, every part side by side in one process (ratios).

  python benchmarks/decoding.py --default DIR --small DIR [--seed1 DIR] [--third DIR]
      [--prompts 8 --prompt_tokens 64 --max_new_tokens 64 --parts limit,speculative,quant,cos
       --cos_settings we,cd[,we3] --cos_gammas 1,2,3,5,8 --target_weights float|int8|int4a8
       --target_embedding none|int8|int4 --out decoding.json]

- `limit`: default model, greedy: the on-device generation (one jitted program per request,
  prefill included) at batch 1 and 8, streaming (`serving.generate.stream`, one read
  every 16 tokens) and the jitted one-token cached step of the decode form alone (chained on
  device, read once: the floor of any per-token loop), also against the loop's tokens after
  the first (the request less a one-token request: the prefill and first sample); batch 8 over
  batch 1 for whole requests and for the tokens after the first (prefill costs grow with the
  batch, decode steps much less); and the small model's generation against the default's (what
  a draft step costs).
- `--target_weights int8`: the default model serves as AQT int8 (float32 elsewhere,
  `export.convert`) wherever it decodes as the target (limit, speculative, cos); `int4a8` as
  packed int4 on int8 activations (W4A8); `float` (the default) serves it as trained.
  `--target_embedding int8` (or `int4`, per-row scales) stores that target's embedding table
  quantized too (its tied logits then run on int8 activations). A `--seed1` model (a second
  default, the weighted ensemble's partner) is served the same way.
- `speculative`: the small model drafts for the default one, on device and batched, against the
  default model alone (on-device generation) at temperatures 0 and 1, gamma 3 and 5, batch 1, 4
  and 8 (the prompts cycled to fill the batch); acceptance and target calls per token.
- `quant`: greedy on-device decode of int8 (AQT serve; with the float and with an int8
  embedding table) and int4 (packed) weights against bf16, batch 1 and 8; int4 in both decode
  forms (`quant.int4_decode`: float, unpacked once per request, and s4, jnp.int4 dequantized in
  every step), and on int8 activations (W4A8, `quant.int4_activations=int8`; with the float and
  with an int4 embedding table).
- `cos`: collaborative decoding on device, batch 1 (each prompt its own request): standard
  against CoS (two models alternating), weighted ensemble (lambda 0.5) of default and small (or
  --seed1) and contrastive decoding of default (expert) and small (amateur, mu 0.1); temperature
  0 at gamma 1, 2, 3, 5, 8 (`--cos_gammas`) and temperature 1 at gamma 3 and 5
  (`--cos_gammas_t1`); a gamma written `a:b` gives each model its own proposal length, in the
  members' order (default first: `1:5` has default propose 1 token, small 5). CoS starts with
  small proposing. `we3` (with `--third`): the uniform weighted ensemble of default, small and
  third, small proposing first, then default, then third.
"""

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np

from efficiency.serving import export
from efficiency.serving.cache import init_cache
from efficiency.serving.collaborate import collaborate
from efficiency.serving.forward import cached_forward
from efficiency.serving.generate import run, stream
from efficiency.serving.loading import check_same_tokenizer, load_model, validation_prompts
from efficiency.serving.sampling import Sampling
from efficiency.serving.speculative import speculate
from efficiency.serving.targets import Contrastive, WeightedEnsemble
from efficiency.serving.weights import decode_form
from efficiency.train.inputs import tokenizer_of

GREEDY = Sampling(0.0)


def interleaved(rounds: int, b: int, prompts: list[np.ndarray], methods: dict) -> dict:
  """Each method `methods[name](chunk)` (returning a Generated, Speculated or Collaborated) on
  the prompts in chunks of `b`, the methods taking turns call by call (so they share the
  machine's load): per method, tokens, the median decode seconds per chunk summed over chunks,
  tokens/s and the results (for acceptance and calls). One warm-up call each first."""
  out = {name: {"tokens": 0, "seconds": 0.0, "results": []} for name in methods}
  for i in range(0, len(prompts), b):
    chunk = prompts[i : i + b]
    runs = {name: [] for name in methods}
    for turn in range(rounds + 1):
      for name, fn in methods.items():
        result = fn(chunk)
        if turn:
          runs[name].append(result)
    for name, results in runs.items():
      o = out[name]
      o["tokens"] += sum(map(len, results[-1].tokens))
      o["seconds"] += statistics.median(r.decode_s for r in results)
      o["results"].append(results[-1])
  for o in out.values():
    o["tokens_per_s"] = o["tokens"] / o["seconds"]
  return out


def limit(model, params, prompt: np.ndarray, new: int, rounds: int) -> dict:
  """Tokens/s of the on-device loop (batch 1, 8) and the bare step."""
  step_model, unpack = decode_form(model)  # the step the on-device loop runs
  forward = jax.jit(lambda *a: cached_forward(step_model, *a), donate_argnums=2)
  step_params = jax.jit(unpack)(params)
  state = {"cache": init_cache(step_model.config, 1, len(prompt) + new + 32)}
  token = jax.device_put(np.ones((1, 1), np.int32))
  starts = [jax.device_put(np.array([len(prompt) + i], np.int32)) for i in range(new)]

  def step_alone():
    cache = state["cache"]
    for start in starts:
      logits, cache = forward(step_params, token, cache, start)
    state["cache"] = cache
    jax.block_until_ready(logits)

  def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start

  measures = {  # seconds per generated token, taking turns (one warm-up turn)
      "device_b1": lambda: run(model, params, [prompt], new, GREEDY, None).decode_s / new,
      "prefill_b1": lambda: run(model, params, [prompt], 1, GREEDY, None).decode_s,  # + 1 token
      "device_b8": lambda: run(model, params, [prompt] * 8, new, GREEDY, None).decode_s
      / (8 * new),
      "prefill_b8": lambda: run(model, params, [prompt] * 8, 1, GREEDY, None).decode_s,
      "stream16_b1": lambda: timed(lambda: list(stream(model, params, [prompt], new, GREEDY, None,
                                                       16))) / new,
      "step_alone_b1": lambda: timed(step_alone) / new,
  }
  times = {name: [] for name in measures}
  for turn in range(rounds + 1):
    for name, measure in measures.items():
      t = measure()
      if turn:
        times[name].append(t)
  seconds = {name: statistics.median(t) for name, t in times.items()}
  prefill = seconds.pop("prefill_b1")
  prefill_b8 = seconds.pop("prefill_b8")
  out = {f"{k}_tokens_per_s": 1 / v for k, v in seconds.items()}
  loop = (seconds["device_b1"] * new - prefill) / (new - 1)  # a token after the first
  loop_b8 = (seconds["device_b8"] * 8 * new - prefill_b8) / (new - 1)  # a step of 8 tokens
  out.update(
      prefill_share=prefill / (seconds["device_b1"] * new),
      device_over_step_alone=seconds["step_alone_b1"] / seconds["device_b1"],
      loop_over_step_alone=seconds["step_alone_b1"] / loop,
      stream16_over_device=seconds["device_b1"] / seconds["stream16_b1"],
      batch8_over_batch1=seconds["device_b1"] / seconds["device_b8"],
      prefill_b8_over_b1=prefill_b8 / prefill,
      batch8_over_batch1_after_prefill=8 * loop / loop_b8,
  )
  return out


def step_costs(target, draft, prompts, new: int, rounds: int) -> dict:
  """Greedy on-device decode of the draft against the target, batch 1: how much cheaper a
  draft step is than a target step."""
  measured = interleaved(rounds, 1, prompts, {
      "target": lambda c: run(*target, c, new, GREEDY, None),
      "draft": lambda c: run(*draft, c, new, GREEDY, None)})
  return {"target_tokens_per_s": measured["target"]["tokens_per_s"],
          "draft_tokens_per_s": measured["draft"]["tokens_per_s"],
          "draft_step_over_target_step":
          measured["target"]["tokens_per_s"] / measured["draft"]["tokens_per_s"]}


def speculative(target, draft, prompts, new: int, eos: int, rounds: int) -> list[dict]:
  rows = []
  for t in (0.0, 1.0):
    sampling = Sampling(t)
    for b in (1, 4, 8):
      methods = {"alone": lambda c, s=sampling: run(*target, c, new, s, eos)}
      for gamma in (3, 5):
        methods[gamma] = lambda c, s=sampling, g=gamma: speculate(target, draft, c, new, s, g, eos)
      measured = interleaved(rounds, b, prompts, methods)
      alone = measured.pop("alone")
      for gamma, spec in measured.items():
        verified = sum(r.verified for r in spec["results"])
        target_calls = sum(r.rounds for r in spec["results"])
        row = {"temperature": t, "batch": b, "gamma": gamma,
               "speedup": spec["tokens_per_s"] / alone["tokens_per_s"],
               "acceptance": sum(r.accepted for r in spec["results"]) / verified,
               "tokens_per_target_call": spec["tokens"] / target_calls / b,
               "target_alone_tokens_per_s": alone["tokens_per_s"],
               "speculative_tokens_per_s": spec["tokens_per_s"]}
        print(json.dumps(row), flush=True)
        rows.append(row)
  return rows


def with_int4_form(served, form: str):
  """`served` (a packed int4 model) decoding in `form` (quant.int4_decode)."""
  quant = ml_collections.FrozenConfigDict({**served.model.quant, "int4_decode": form})
  return dataclasses.replace(served, model=served.model.clone(quant=quant))


def quant(trained, prompts, new: int, rounds: int) -> list[dict]:
  int4 = export.convert(trained, 4, "bfloat16")
  models = {"bf16": export.cast_float(trained, "bfloat16"),
            "int8": export.convert(trained, 8, "bfloat16"),
            "int8, int8 table": export.convert(trained, 8, "bfloat16", embedding="int8"),
            "int4 float": with_int4_form(int4, "float"), "int4 s4": with_int4_form(int4, "s4"),
            "int4 on int8 activations": export.convert(trained, 4, "bfloat16",
                                                       int4_activations="int8"),
            "int4 on int8 activations, int4 table": export.convert(
                trained, 4, "bfloat16", embedding="int4", int4_activations="int8")}
  rows = []
  for b in (1, 8):
    measured = interleaved(rounds, b, prompts, {
        name: lambda c, m=m: run(m.model, m.params, c, new, GREEDY, None)
        for name, m in models.items()})
    for name, m in measured.items():
      row = {"weights": name, "batch": b, "tokens_per_s": m["tokens_per_s"],
             "over_bf16": m["tokens_per_s"] / measured["bf16"]["tokens_per_s"],
             "weight_bytes": export.weight_bytes(models[name].params)}
      print(json.dumps(row), flush=True)
      rows.append(row)
  return rows


def cos(pairs: dict, prompts, new: int, eos: int, rounds: int, gammas) -> list[dict]:
  """On device, batch 1: standard collaborative decoding against CoS for each gamma."""
  rows = []
  for label, (collab, members, proposer) in pairs.items():
    methods = {"standard": lambda c, k=collab, m=members: collaborate(k, m, c, new, "standard",
                                                                      eos)}
    for gamma in gammas:
      methods[gamma] = lambda c, k=collab, m=members, g=gamma, p=proposer: collaborate(
          k, m, c, new, "cos", eos, g, p)
    measured = interleaved(rounds, 1, prompts, methods)
    standard = measured.pop("standard")
    std_calls = sum(r.calls for r in standard["results"])
    for gamma, fast in measured.items():
      calls = sum(r.calls for r in fast["results"])
      row = {"setting": label, "gamma": gamma,
             "speedup": fast["tokens_per_s"] / standard["tokens_per_s"],
             "acceptance": sum(r.accepted for r in fast["results"])
             / sum(r.verified for r in fast["results"]),
             "tokens_per_call": {"standard": standard["tokens"] / std_calls,
                                 "cos": fast["tokens"] / calls},
             "standard_tokens_per_s": standard["tokens_per_s"],
             "cos_tokens_per_s": fast["tokens_per_s"]}
      if collab.sampling.temperature == 0:
        row["same_tokens_as_standard"] = all(
            np.array_equal(a, b)
            for x, y in zip(fast["results"], standard["results"], strict=True)
            for a, b in zip(x.tokens, y.tokens, strict=True))
      print(json.dumps(row), flush=True)
      rows.append(row)
  return rows


def parse_gammas(text: str) -> list:
  """`--cos_gammas`: comma-separated gammas, each an int or `a:b[:c]` (one per model)."""
  return [tuple(int(g) for g in x.split(":")) if ":" in x else int(x) for x in text.split(",")]


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--default", required=True)
  parser.add_argument("--small", required=True)
  parser.add_argument("--seed1")
  parser.add_argument("--third", help="a third model, for the three-model ensemble (we3)")
  parser.add_argument("--cos_settings", default="we,cd")
  parser.add_argument("--cos_gammas", default="1,2,3,5,8")
  parser.add_argument("--cos_gammas_t1", default="3,5")
  parser.add_argument("--prompts", type=int, default=8)
  parser.add_argument("--prompt_tokens", type=int, default=64)
  parser.add_argument("--max_new_tokens", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--parts", default="limit,speculative,quant,cos")
  parser.add_argument("--target_weights", default="float", choices=["float", "int8", "int4a8"])
  parser.add_argument("--target_embedding", default="none", choices=["none", "int8", "int4"],
                      help="the quantized target's embedding table (quant.embedding)")
  parser.add_argument("--out", default="decoding.json")
  args = parser.parse_args()
  names = [args.default, args.small, args.seed1 or args.small, args.third or args.small]
  unique = {n: load_model(n) for n in dict.fromkeys(names)}
  loaded = [unique[n] for n in names]
  check_same_tokenizer([m.config for m in loaded], names)
  default, small = loaded[0], loaded[1]
  tokenizer = tokenizer_of(default.config)
  prompts = validation_prompts(default.config, tokenizer, args.prompts, args.prompt_tokens)
  new, eos, parts = args.max_new_tokens, tokenizer.eos_id, args.parts.split(",")

  def as_target(trained):
    """A default-shaped model as the target is served (`--target_weights`)."""
    if args.target_weights == "float":
      return trained
    bits, activations = (8, "float") if args.target_weights == "int8" else (4, "int8")
    return export.convert(trained, bits, "float32", embedding=args.target_embedding,
                          int4_activations=activations)

  served = as_target(default)
  target, draft = (served.model, served.params), (small.model, small.params)
  results: dict = {"settings": vars(args)}
  if "limit" in parts:
    results["limit"] = limit(*target, prompts[0], new, args.rounds)
    print(json.dumps(results["limit"]), flush=True)
    results["step_costs"] = step_costs(target, draft, prompts[:4], new, args.rounds)
    print(json.dumps(results["step_costs"]), flush=True)
  if "speculative" in parts:
    results["speculative"] = speculative(target, draft, prompts, new, eos, args.rounds)
  if "quant" in parts:
    results["quant"] = quant(default, prompts, new, args.rounds)
  if "cos" in parts:
    twin = as_target(loaded[2]) if args.seed1 else loaded[2]  # served as the default is
    partner, third = ((m.model, m.params) for m in (twin, loaded[3]))
    settings = args.cos_settings.split(",")
    results["cos"] = []
    for t, gammas in ((0.0, parse_gammas(args.cos_gammas)),
                      (1.0, parse_gammas(args.cos_gammas_t1))):
      sampling = Sampling(t)
      pairs = {f"we T={t:g}": (WeightedEnsemble((0.5, 0.5), sampling), [target, partner], 1),
               f"cd T={t:g}": (Contrastive(0.1, sampling), [target, draft], 1),
               f"we3 T={t:g}": (WeightedEnsemble((1 / 3,) * 3, sampling),
                                [target, draft, third], 1)}
      pairs = {k: v for k, v in pairs.items() if k.split()[0] in settings}
      results["cos"] += cos(pairs, prompts, new, eos, args.rounds, gammas)
  Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
