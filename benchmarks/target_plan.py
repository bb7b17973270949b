"""The study's shapes compiled for the chips they target (BENCHMARKS.md, "Compiled for the
target"): per variant and target, whether the train step compiles, the per-chip peak, whether it
fits, the largest global batch that fits and the kernel `auto` picks; one `evals.plan
--topology` per row, each also written as JSON to --results (rows already there are skipped, so
an interrupted run resumes).

  python benchmarks/target_plan.py [--size=0.5b] [--variants=gqa,mqa,mla,nsa,moe]
      [--targets=v5e:2x4,v5p:2x2x1,v6e:2x4,v5p:2x4x4,h100:8,h200:8] [--batch=16]
      [--search=true] [--results=target_plan.jsonl]
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Variant -> the config argument's suffix (gqa is the study's default attention).
SUFFIX = {"gqa": "", "mqa": "-mqa", "mla": "-mla", "nsa": "-nsa", "moe": "-moe"}
# Pod slice names as cloud consoles give them (v5p counts TensorCores, two per chip).
NAMES = {"v5e:2x4": "v5e-8", "v5p:2x2x1": "v5p-8", "v6e:2x4": "v6e-8", "v5p:2x4x4": "v5p-64",
         "h100:8": "8 x H100", "h200:8": "8 x H200"}


def plan(size: str, variant: str, target: str, batch: int, search: bool, mesh: list[str]) -> dict:
  """One `evals.plan --topology` run's JSON plan (or its error line)."""
  with tempfile.TemporaryDirectory() as tmp:
    output = Path(tmp) / "plan.json"
    proc = subprocess.run(
        [sys.executable, "-m", "evals.plan", f"--topology={target}",
         f"--config=configs/efficientllm.py:{size}{SUFFIX[variant]}",
         f"--config.batch_size={batch}", f"--search={str(search).lower()}",
         f"--output={output}", *mesh],
        cwd=ROOT, capture_output=True, text=True, timeout=7200,
    )
    if output.exists():
      return json.loads(output.read_text())
  return {"compiled": False, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}


def row(size: str, variant: str, target: str, result: dict) -> str:
  gb = lambda n: "-" if n is None else f"{n / 1e9:.1f}"
  where = f"{NAMES.get(target, target)} (`{target}`)"
  if not result.get("compiled"):
    return f"| {size}-{variant} | {where} | - | no: {result.get('error')} | | | | |"
  mesh = result["mesh"]
  mesh_text = " x ".join(f"{k} {v}" for k, v in mesh.items() if v > 1) or "1 chip"
  peak = result["per_device_bytes"].get("peak_estimate")
  return (f"| {size}-{variant} | {where} | {mesh_text} | yes ({result['compile_time_s']:.0f} s) | "
          f"{gb(peak)} / {gb(result['chip']['hbm_bytes'])} | "
          f"{'yes' if result['fits'] else 'no'} at {result['batch_size']} | "
          f"{result.get('max_batch_size') or '-'} | {result['attention_impl']} |")


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--size", default="0.5b")
  parser.add_argument("--variants", default="gqa,mqa,mla,nsa,moe")
  parser.add_argument("--targets", default="v5e:2x4,v5p:2x2x1,v6e:2x4,v5p:2x4x4,h100:8,h200:8")
  parser.add_argument("--batch", type=int, default=16, help="global batch the plan starts at")
  parser.add_argument("--search", default="true", help="search the largest batch that fits")
  parser.add_argument("--mesh", default="", help="e.g. --config.mesh.fsdp=2,--config.mesh.expert=4")
  parser.add_argument("--results", default="target_plan.jsonl")
  args = parser.parse_args()
  results = Path(args.results)
  done = {}
  if results.exists():
    for line in results.read_text().splitlines():
      entry = json.loads(line)
      done[entry["key"]] = entry["plan"]
  print("| shape | target | mesh | compiles (time) | peak / HBM GB per chip | fits at batch | "
        "largest batch that fits | `auto` kernel |")
  print("|---|---|---|---|---|---|---|---|")
  mesh = [m for m in args.mesh.split(",") if m]
  for variant in args.variants.split(","):
    for target in args.targets.split(","):
      key = f"{args.size}-{variant} {target} {args.batch} {args.search} {args.mesh}"
      if key not in done:
        done[key] = plan(args.size, variant, target, args.batch, args.search == "true", mesh)
        with results.open("a") as f:
          f.write(json.dumps({"key": key, "plan": done[key]}) + "\n")
      print(row(args.size, variant, target, done[key]), flush=True)


if __name__ == "__main__":
  main()
