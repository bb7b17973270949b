"""Wall-clock, FLOPs and tokens to target of sequence-length warmup: no warmup (baseline), masked
warmup (rows kept at seq_len), bucketed warmup (short rows, the same tokens) and Li et al.'s
schedule (`fixed=sequences`: batch_size rows of the piece length, fewer tokens per warmup step;
`sequences_equal_tokens` runs it for more steps, to the baseline's tokens), side by side in one
run on the default corpus, at each sequence length asked for with the same tokens per
full-length step.

  python -m benchmarks.seq_len_warmup [--seq_lens=128,512] [--steps=240] [--root=DIR]
      [--start=64] [--warmup_steps=180] [--variant NAME=ARM:FIELD=VALUE[,FIELD=VALUE...]]...

The warmup defaults (from 64 tokens over 180 steps) are the schedule that measured best on the
default corpus (BENCHMARKS.md, "A longer warmup from 64 tokens").

A `--variant` is one more arm: ARM's settings with config fields changed, e.g.
`--variant w120=sequences_equal_tokens:data.seq_len_warmup.steps=120` (a shorter warmup, run to
the baseline's tokens) or `--variant baseline_again=baseline` (the baseline once more, last: how
far the machine drifted during the run). Variants run after the arms, in the order given.

Each arm is a train.py run (`train_and_evaluate`) in DIR/<seq_len>-<arm>; a finished one is
read back, not retrained. "To target" is the first eval at or below the target: the run's
`target_loss`, and the loss the baseline ends at (equal final loss). Time is the runs' time in
train steps (compiles, evals and saves left out), FLOPs the model FLOPs at each step's row
length (efficiency.model.flops). Prints a Markdown table and, last, one JSON line.
"""

import argparse
import json
import math
import time
from pathlib import Path

import jax
import ml_collections

from configs.default import get_config
from data.seq_len_warmup import piece_len
from efficiency.config import override, resolve
from efficiency.train.loop import train_and_evaluate
from efficiency.workdir import files

ARMS = {
    "baseline": {"data.seq_len_warmup.start": 0},
    "masked": {"data.seq_len_warmup.buckets": False},
    "bucketed": {"data.seq_len_warmup.buckets": True},
    "sequences": {"data.seq_len_warmup.buckets": True, "data.seq_len_warmup.fixed": "sequences"},
    # The same, run for as many more steps as give it the baseline's tokens (its schedule
    # stretched to match): Li et al. compare at equal tokens.
    "sequences_equal_tokens": {"data.seq_len_warmup.buckets": True,
                               "data.seq_len_warmup.fixed": "sequences"},
}
TOKENS_PER_STEP = 16 * 128  # the default batch


def parse_variant(text: str) -> tuple[str, str, dict]:
  """`NAME=ARM[:FIELD=VALUE,...]` as (name, arm, fields); a ValueError names what is wrong."""
  name, _, rest = text.partition("=")
  arm, _, changes = rest.partition(":")
  if not name or name in ARMS or arm not in ARMS:
    raise ValueError(f"--variant {text!r}: want NAME=ARM[:FIELD=VALUE,...] with a new NAME and "
                     f"ARM one of {', '.join(ARMS)}")
  fields = {}
  for change in filter(None, changes.split(",")):
    field, eq, value = change.partition("=")
    if not eq:
      raise ValueError(f"--variant {text!r}: {change!r} is not FIELD=VALUE")
    fields[field] = value
  return name, arm, fields


def arm_config(arm: str, seq_len: int, args: argparse.Namespace, fields: dict | None = None):
  """The default config for one arm (with `fields` changed on top, for a variant):
  `args.steps` steps of TOKENS_PER_STEP tokens."""
  config = get_config()
  settings = {
      "steps": args.steps, "seq_len": seq_len, "batch_size": TOKENS_PER_STEP // seq_len,
      "eval_every": args.eval_every, "checkpoint_every": args.steps, "target_loss": args.target,
      "data.seq_len_warmup.start": args.start, "data.seq_len_warmup.steps": args.warmup_steps,
      **ARMS[arm], **(fields or {}),
  }
  for field, value in settings.items():
    override(config, field, value)
  if arm == "sequences_equal_tokens":  # skipped row tail tokens, in full-length steps
    skipped = sum(seq_len - piece_len(s, config) for s in range(config.data.seq_len_warmup.steps))
    steps = args.steps + math.ceil(skipped / seq_len)
    override(config, "steps", steps)
    override(config, "checkpoint_every", steps)
  return resolve(config, jax.device_count())


def to_loss(evals: list[dict], loss: float) -> dict:
  """Step, tokens, FLOPs and train time at the first eval at or below `loss` (None if never)."""
  first = next((e for e in evals if e["eval_loss"] <= loss), None)
  keys = ("step", "tokens_seen", "flops_seen", "train_time_s")
  return {k: None if first is None else first[k] for k in keys}


def planned_runs(args: argparse.Namespace) -> list[tuple[int, str, ml_collections.ConfigDict]]:
  """(seq_len, arm or variant name, config) of every run, in order, all built before any trains,
  so a bad arm, variant or field fails at once; a ValueError names it."""
  arms = args.arms.split(",")
  if unknown := [a for a in arms if a not in ARMS]:
    raise ValueError(f"--arms: {', '.join(unknown)} unknown; valid arms: {', '.join(ARMS)}")
  variants = {}
  for name, arm, fields in map(parse_variant, args.variant):
    if name in variants:
      raise ValueError(f"--variant {name!r} is given twice")
    variants[name] = (arm, fields)
  runs = []
  for i, seq_len in enumerate(int(s) for s in args.seq_lens.split(",")):
    order = arms if i % 2 == 0 else arms[::-1]  # alternate the order against drift
    runs += [(seq_len, arm, arm_config(arm, seq_len, args)) for arm in order]
    runs += [(seq_len, name, arm_config(arm, seq_len, args, fields))
             for name, (arm, fields) in variants.items()]
  return runs


def run_arm(root: Path, name: str, seq_len: int, config: ml_collections.ConfigDict) -> dict:
  """Trains (or reads back) arm or variant `name` at `seq_len`."""
  workdir = root / f"{seq_len}-{name}"
  started = time.perf_counter()
  summary = train_and_evaluate(config, workdir)
  records = [json.loads(line) for line in (workdir / files.METRICS).read_text().splitlines()]
  evals = [r for r in records if "eval_loss" in r and "train_time_s" in r]
  return {
      "arm": name, "seq_len": seq_len, "summary": summary, "evals": evals,
      "run_s": time.perf_counter() - started,
  }


def _ratio(base, value) -> str:
  return "-" if not base or not value else f"{base / value:.2f}x"


def _num(value, fmt: str) -> str:
  return "not reached" if value is None else format(value, fmt)


def table(results: list[dict]) -> str:
  head = ("| seq_len | arm | final eval loss | target | steps | tokens | GFLOPs | train s "
          "| time saving | FLOPs saving | compile s |")
  lines = [head, "|" + "---|" * 11]
  for seq_len in sorted({r["seq_len"] for r in results}):
    arms = {r["arm"]: r for r in results if r["seq_len"] == seq_len}
    base_final = arms["baseline"]["summary"]["final_eval_loss"]
    for label, loss in (("target_loss", None), ("baseline final", base_final)):
      loss_ = arms["baseline"]["summary"]["target_loss"] if loss is None else loss
      base = to_loss(arms["baseline"]["evals"], loss_)
      for arm in arms:
        r = arms[arm]
        hit = to_loss(r["evals"], loss_)
        flops = None if hit["flops_seen"] is None else hit["flops_seen"] / 1e9
        lines.append(
            f"| {seq_len} | {arm} | {r['summary']['final_eval_loss']:.3f} | {label} {loss_:.3f} "
            f"| {_num(hit['step'], 'd')} | {_num(hit['tokens_seen'], ',')} | {_num(flops, ',.0f')} "
            f"| {_num(hit['train_time_s'], '.1f')} "
            f"| {_ratio(base['train_time_s'], hit['train_time_s'])} "
            f"| {_ratio(base['flops_seen'], hit['flops_seen'])} "
            f"| {r['summary']['compile_time_s']:.1f} |"
        )
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seq_lens", default="128,512")
  parser.add_argument("--steps", type=int, default=240)
  parser.add_argument("--eval_every", type=int, default=20)
  parser.add_argument("--target", type=float, default=5.0)
  parser.add_argument("--start", type=int, default=64)
  parser.add_argument("--warmup_steps", type=int, default=180)
  parser.add_argument("--arms", default=",".join(ARMS))
  parser.add_argument("--variant", action="append", default=[],
                      help="NAME=ARM[:FIELD=VALUE,...]: one more arm (repeatable)")
  parser.add_argument("--root", default="/tmp/seq_len_warmup_benchmark")
  args = parser.parse_args()
  try:
    runs = planned_runs(args)
  except ValueError as e:
    parser.error(str(e))
  root = Path(args.root)
  results = []
  for seq_len, name, config in runs:
    results.append(run_arm(root, name, seq_len, config))
    s = results[-1]["summary"]
    print(f"{seq_len} {name}: final {s['final_eval_loss']:.4f}, "
          f"time to target {s['time_to_target_s']}, run {results[-1]['run_s']:.0f} s", flush=True)
  print(table(results))
  keep = ("final_eval_loss", "tokens_to_target", "flops_to_target", "time_to_target_s",
          "flops_seen", "tokens_per_sec", "compile_time_s")
  print(json.dumps([{"arm": r["arm"], "seq_len": r["seq_len"],
                     **{k: r["summary"].get(k) for k in keep},
                     "evals": r["evals"]} for r in results],
                   default=lambda x: None if isinstance(x, float) and math.isnan(x) else x))


if __name__ == "__main__":
  main()
