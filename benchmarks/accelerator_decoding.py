"""Decoding on one accelerator: the study's shapes served in bf16, int8 and int4, and what
speculation costs there.

  python -m benchmarks.accelerator_decoding [--target 1.5b] [--draft 0.5b] [--quant_size 0.5b]
      [--parts steps,quant,speculative] [--prompt_tokens 128] [--max_new_tokens 128]
      [--rounds 3] [--out DIR]

SIZE is a shape of configs/efficientllm.py, or `default` (configs/default.py, for a check on
CPU). Random weights stored and computed in bfloat16: a decode's speed does not depend on the
weights' values, and with no EOS every request makes all its tokens. Greedy throughout. Each
part runs in a fresh process (its own device memory; a part that fails is reported, not fatal):
- `steps`: target and draft, on-device generation (efficiency.serving.generate) tokens/s at
  batch 1 and 8, and the cost of one cached call of the target's decode form by shape, rows x
  new tokens (benchmarks/decode_calls.py: 32 calls chained on device): what a verification of
  gamma + 1 tokens costs over one decode step on this device.
- `quant`: --quant_size's int8 (AQT serve) and int4 (packed, both decode forms of
  `quant.int4_decode`: `s4` and `float`) against bf16, batch 1 and 8.
- `speculative`: the draft proposing for the target (efficiency.serving.speculative), gamma 3
  and 5, batch 1, against the target alone. Random weights agree only by chance, so the
  acceptance measured here is not a trained pair's; the part reports a round's cost in target
  decode steps, from which the speedup at any acceptance a follows,
  (1 - a^(gamma + 1)) / (1 - a) tokens per round over that cost, and gives it at a = 0.8 and 0.9.
Prints one JSON line per result and markdown tables, and writes accelerator_decoding.json to
--out. Sized for about 4 minutes on one H100/H200 (mostly compilation).
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from configs.efficientllm import SHAPES

ROOT = Path(__file__).resolve().parents[1]
PROJECTED_ACCEPTANCE = (0.8, 0.9)


def served_model(size: str):
  """A TrainedModel of `size` with random bfloat16 weights."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from configs import default, efficientllm
  from efficiency.model.transformer import make_model
  from efficiency.workdir.restore import TrainedModel

  config = default.get_config() if size == "default" else efficientllm.get_config(size)
  config.model.update(param_dtype="bfloat16", dtype="bfloat16", remat="none")
  model = make_model(config)
  tokens = jnp.zeros((1, 8), jnp.int32)
  params = jax.jit(model.init)(jax.random.key(0), tokens, tokens + 1, tokens)["params"]
  return TrainedModel(config, model, nn.unbox(params), 0, None)


def prompts(vocab: int, batch: int, length: int) -> list:
  import numpy as np

  rng = np.random.default_rng(0)
  return [rng.integers(1, vocab, length).astype(np.int32) for _ in range(batch)]


def steps(args) -> list[dict]:
  from benchmarks.decode_calls import chained_calls, ms_per_call
  from benchmarks.decoding import GREEDY, interleaved
  from efficiency.serving.generate import run

  rows = []
  for role, size in (("target", args.target), ("draft", args.draft)):
    served = served_model(size)
    for b in (1, 8):
      chunk = prompts(served.config.model.vocab_size, b, args.prompt_tokens)
      measured = interleaved(args.rounds, b, chunk, {
          "generate": lambda c, m=served: run(m.model, m.params, c, args.max_new_tokens, GREEDY,
                                              None)})["generate"]
      rows.append({"part": "steps", "role": role, "size": size, "batch": b,
                   "tokens_per_s": measured["tokens_per_s"]})
    if role == "target":
      slots = args.prompt_tokens + args.max_new_tokens
      shapes = [(1, 1), (1, 4), (1, 6), (8, 1)]
      compiled = {s: chained_calls(served.model, served.params, *s, slots, 32) for s in shapes}
      ms = ms_per_call(compiled, served.params, args.rounds, 32)
      for (r, t), call_ms in ms.items():
        rows.append({"part": "calls", "size": size, "rows": r, "tokens": t,
                     "ms_per_call": call_ms, "over_one_token": call_ms / ms[1, 1]})
  return rows


def quant(args) -> list[dict]:
  from benchmarks.decoding import GREEDY, interleaved, with_int4_form
  from efficiency.serving import export
  from efficiency.serving.generate import run

  served = served_model(args.quant_size)
  int4 = export.convert(served, 4, "bfloat16")
  models = {"bf16": served, "int8": export.convert(served, 8, "bfloat16"),
            "int4 s4": with_int4_form(int4, "s4"), "int4 float": with_int4_form(int4, "float")}
  rows = []
  for b in (1, 8):
    chunk = prompts(served.config.model.vocab_size, b, args.prompt_tokens)
    measured = interleaved(args.rounds, b, chunk, {
        name: lambda c, m=m: run(m.model, m.params, c, args.max_new_tokens, GREEDY, None)
        for name, m in models.items()})
    for name, m in measured.items():
      rows.append({"part": "quant", "size": args.quant_size, "weights": name, "batch": b,
                   "tokens_per_s": m["tokens_per_s"],
                   "over_bf16": m["tokens_per_s"] / measured["bf16"]["tokens_per_s"],
                   "weight_mb": export.weight_bytes(models[name].params) / 1e6})
  return rows


def expected_tokens(acceptance: float, gamma: int) -> float:
  """New tokens per speculative round at a per-draft acceptance rate (Leviathan et al. 2023)."""
  return (1 - acceptance ** (gamma + 1)) / (1 - acceptance)


def speculative(args) -> list[dict]:
  from benchmarks.decoding import GREEDY, interleaved
  from efficiency.serving.generate import run
  from efficiency.serving.speculative import speculate

  target, draft = served_model(args.target), served_model(args.draft)
  pair = (target.model, target.params), (draft.model, draft.params)
  chunk = prompts(target.config.model.vocab_size, 1, args.prompt_tokens)
  new = args.max_new_tokens
  methods = {"alone": lambda c: run(*pair[0], c, new, GREEDY, None)}
  for gamma in (3, 5):
    methods[gamma] = lambda c, g=gamma: speculate(*pair, c, new, GREEDY, g, None)
  measured = interleaved(args.rounds, 1, chunk, methods)
  alone = measured.pop("alone")
  rows = []
  for gamma, spec in measured.items():
    result = spec["results"][-1]
    round_steps = (spec["seconds"] / result.rounds) / (alone["seconds"] / new)
    rows.append({
        "part": "speculative", "target": args.target, "draft": args.draft, "gamma": gamma,
        "speedup": spec["tokens_per_s"] / alone["tokens_per_s"],
        "acceptance": result.acceptance, "round_in_target_steps": round_steps,
        **{f"projected_speedup_a{a:g}": expected_tokens(a, gamma) / round_steps
           for a in PROJECTED_ACCEPTANCE},
    })
  return rows


PARTS = {"steps": steps, "quant": quant, "speculative": speculative}


def tables(rows: list[dict]) -> str:
  """The results as markdown tables, one per part."""
  out = []
  for part, header, cells in (
      ("steps", "| role | size | batch | tokens/s |",
       lambda r: f"| {r['role']} | {r['size']} | {r['batch']} | {r['tokens_per_s']:,.0f} |"),
      ("calls", "| size | rows x tokens | ms per call | over 1 x 1 |",
       lambda r: f"| {r['size']} | {r['rows']} x {r['tokens']} | {r['ms_per_call']:.3f} "
       f"| {r['over_one_token']:.2f} |"),
      ("quant", "| size | weights | batch | tokens/s | over bf16 | weights (MB) |",
       lambda r: f"| {r['size']} | {r['weights']} | {r['batch']} | {r['tokens_per_s']:,.0f} "
       f"| {r['over_bf16']:.2f}x | {r['weight_mb']:,.1f} |"),
      ("speculative", "| target / draft | gamma | speedup | acceptance | round (target steps) "
       "| at a=0.8 | at a=0.9 |",
       lambda r: f"| {r['target']} / {r['draft']} | {r['gamma']} | {r['speedup']:.2f}x "
       f"| {r['acceptance']:.2f} | {r['round_in_target_steps']:.2f} "
       f"| {r['projected_speedup_a0.8']:.2f}x | {r['projected_speedup_a0.9']:.2f}x |"),
  ):
    mine = [r for r in rows if r.get("part") == part and "failed" not in r]
    if mine:
      out += [header, "|" + "---|" * (header.count("|") - 1), *map(cells, mine), ""]
  for r in rows:
    if "failed" in r:
      out.append(f"{r['part']}: failed: {r['failed'].strip().splitlines()[-1]}")
  return "\n".join(out)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--target", default="1.5b")
  parser.add_argument("--draft", default="0.5b")
  parser.add_argument("--quant_size", default="0.5b")
  parser.add_argument("--parts", default="steps,quant,speculative")
  parser.add_argument("--prompt_tokens", type=int, default=128)
  parser.add_argument("--max_new_tokens", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--out", default=os.environ.get("OUT", "."))
  parser.add_argument("--one", help=argparse.SUPPRESS)  # PART, run in this process
  args = parser.parse_args()
  if args.one:
    for row in PARTS[args.one](args):
      print(json.dumps(row), flush=True)
    return
  parts = args.parts.split(",")
  unknown = sorted(set(parts) - set(PARTS))
  if unknown:
    parser.error(f"--parts {unknown} unknown; valid choices: {sorted(PARTS)}")
  sizes = ["default", *SHAPES]
  for flag in ("target", "draft", "quant_size"):
    if getattr(args, flag) not in sizes:
      parser.error(f"--{flag}={getattr(args, flag)!r} unknown; valid choices: {sizes}")
  rows = []
  for part in parts:
    command = [sys.executable, "-m", "benchmarks.accelerator_decoding", f"--one={part}",
               *(f"--{k}={v}" for k, v in vars(args).items() if k not in ("one", "parts"))]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    found = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    rows += found or [{"part": part, "failed": proc.stderr[-1500:] or "no output"}]
    for row in found or rows[-1:]:
      print(json.dumps(row), file=sys.stderr, flush=True)
  Path(args.out).mkdir(parents=True, exist_ok=True)
  (Path(args.out) / "accelerator_decoding.json").write_text(json.dumps(rows, indent=2))
  print(tables(rows))


if __name__ == "__main__":
  main()
