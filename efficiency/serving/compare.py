"""Decoding methods side by side on the same prompts: standard collaborative decoding, naive
speculation and CoS (the alternate proposal framework), with tokens/s, speedup over standard,
acceptance and tokens per model call. `compare_on_device` runs standard and CoS on device
(`collaborate`); `compare` runs the host engine (`naive` too). Both take any number of models."""

import numpy as np
from tqdm import tqdm

from efficiency.serving.collaborate import collaborate
from efficiency.serving.speculation import Engine

# Report names of the methods, and the engine's names for them.
METHODS = {"standard": "standard", "naive": "naive", "cos": "alternate"}


def compare(
    engine: Engine,
    prompts: list[np.ndarray],
    max_new_tokens: int,
    gamma: int,
    proposer: int,
    seed: int,
    eos_id: int | None,
    methods: dict[str, str] = METHODS,
) -> dict:
  """Decodes every prompt with every method in turn (prompt 0 twice: the first pass warms up
  and is not counted); returns per-method totals and ratios over `standard`."""
  engine.warmup(max(map(len, prompts)), gamma)
  totals = {name: {"tokens": 0, "decode_s": 0.0, "verified": 0, "accepted": 0, "calls": 0}
            for name in methods}
  outputs = {name: [] for name in methods}
  for i, prompt in enumerate(tqdm([prompts[0], *prompts], desc="prompts", leave=False)):
    for name, method in methods.items():
      rng = np.random.default_rng([seed, i])
      tokens, stats = engine.decode(prompt, max_new_tokens, rng, method, gamma, eos_id, proposer)
      if i == 0:
        continue
      outputs[name].append(tokens.tolist())
      t = totals[name]
      t["tokens"] += stats.tokens
      t["decode_s"] += stats.decode_s
      t["verified"] += stats.verified
      t["accepted"] += stats.accepted
      t["calls"] += sum(stats.calls)
  return _summarize(totals, outputs)


def _summarize(totals: dict, outputs: dict) -> dict:
  """Per-method rates, speedups over `standard` and greedy identity, from summed totals."""
  report = {}
  for name, t in totals.items():
    report[name] = {
        **t,
        "tokens_per_s": t["tokens"] / t["decode_s"],
        "acceptance": t["accepted"] / t["verified"] if t["verified"] else None,
        "tokens_per_call": t["tokens"] / max(t["calls"], 1),
    }
  base = report["standard"]["tokens_per_s"] if "standard" in report else None
  for name in report:
    report[name]["speedup"] = report[name]["tokens_per_s"] / base if base else None
  report["same_tokens_as_standard"] = {
      name: outputs[name] == outputs["standard"] for name in outputs if "standard" in outputs
  }
  return report


def compare_on_device(
    collab, members: list, prompts: list[np.ndarray], max_new_tokens: int,
    gamma: int | tuple[int, ...], proposer: int, seed: int, eos_id: int | None,
) -> dict:
  """Standard and CoS on device, each prompt its own request (batch 1, as the paper measures),
  compilation excluded; the same report as `compare`."""
  methods = ("standard", "cos")
  totals = {name: {"tokens": 0, "decode_s": 0.0, "verified": 0, "accepted": 0, "calls": 0}
            for name in methods}
  outputs = {name: [] for name in methods}
  for i, prompt in enumerate(tqdm(prompts, desc="prompts", leave=False)):
    for name in methods:
      out = collaborate(collab, members, [prompt], max_new_tokens, name, eos_id, gamma,
                        proposer, seed=seed, first_row=i)
      outputs[name].append(out.tokens[0].tolist())
      t = totals[name]
      t["tokens"] += len(out.tokens[0])
      t["decode_s"] += out.decode_s
      t["verified"] += out.verified
      t["accepted"] += out.accepted
      t["calls"] += out.calls
  return _summarize(totals, outputs)


def table(report: dict) -> str:
  rows = [f"{'method':<10}{'tokens':>8}{'tokens/s':>10}{'speedup':>9}{'accept':>8}{'tok/call':>10}"]
  for name in METHODS:
    if name in report:
      r = report[name]
      acc = "-" if r["acceptance"] is None else f"{r['acceptance']:.2f}"
      rows.append(f"{name:<10}{r['tokens']:>8}{r['tokens_per_s']:>10.1f}{r['speedup']:>8.2f}x"
                  f"{acc:>8}{r['tokens_per_call']:>10.2f}")
  return "\n".join(rows)
