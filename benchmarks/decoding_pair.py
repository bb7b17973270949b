"""Trains a speculative-decoding pair that agrees: a target and a draft distilled from it.

  python benchmarks/decoding_pair.py [--root /tmp/pair] [--target 4x512] [--target_steps 1200]
      [--draft_steps 1200] [--distill_weight 0.9] [--check_prompts 8]

Both train with train.py on configs/default.py (the default corpus and tokenizer), one after the
other; a rerun skips finished runs and resumes interrupted ones. The target (`--target`):
- `4x512` (the default): 4 layers of d_model 512, 14.7M parameters; the draft step costs
  0.056-0.08 of its decode step on CPU, so the draft is more than 8x cheaper per call (both
  models train in about 47 minutes on 2 CPU cores);
- `4x256`: the former 4-layer d_model 256 default, 4.2M parameters, whose decode step is
  mostly fixed per-call cost on CPU (the draft step costs 0.14-0.20 of it).
The draft has 2 layers of d_model 96 and learns from the target's next-token distributions
(`distill.teacher`, efficiency.train.distill) as well as from the data. Then it reports, with
no timing, how often the target accepts the draft's tokens (speculative decoding on device,
gamma 5, temperatures 0 and 1, batch 1, on validation prompts), written to ROOT/pair.json.
The speed tables come from

  python benchmarks/decoding.py --default ROOT/target --small ROOT/draft --parts ...
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

TARGETS = {
    "4x512": {"model.num_layers": 4, "model.d_model": 512, "model.num_heads": 8,
              "model.num_kv_heads": 4, "model.d_ff": 1536},
    "4x256": {"model.num_layers": 4, "model.d_model": 256, "model.num_heads": 4,
              "model.num_kv_heads": 2, "model.d_ff": 768},
}
DRAFT = {"model.num_layers": 2, "model.d_model": 96, "model.num_heads": 2,
         "model.num_kv_heads": 1, "model.d_ff": 288}


def train(workdir: Path, steps: int, fields: dict) -> None:
  """train.py on configs/default.py with `fields`, `steps` steps, a 1/24 warmup and 12 evals."""
  fields = {**fields, "steps": steps, "optimizer.warmup_steps": max(1, steps // 24),
            "eval_every": max(1, steps // 12), "checkpoint_every": max(1, steps // 6)}
  flags = [f"--config.{k}={v}" for k, v in fields.items()]
  command = [sys.executable, "train.py", f"--workdir={workdir}", "--config=configs/default.py",
             *flags]
  print(" ".join(command[1:]), flush=True)
  subprocess.run(command, cwd=ROOT, check=True)


def agreement(target_dir: Path, draft_dir: Path, prompts: int, new: int) -> dict:
  """Acceptance of the draft's tokens by the target at gamma 5, temperatures 0 and 1."""
  from efficiency.serving.loading import check_same_tokenizer, load_model, validation_prompts
  from efficiency.serving.sampling import Sampling
  from efficiency.serving.speculative import speculate
  from efficiency.train.inputs import tokenizer_of

  target, draft = load_model(target_dir), load_model(draft_dir)
  check_same_tokenizer([target.config, draft.config], ["target", "draft"])
  tokenizer = tokenizer_of(target.config)
  chunks = validation_prompts(target.config, tokenizer, prompts, 64)
  out = {}
  for temperature in (0.0, 1.0):
    accepted = verified = 0
    for prompt in chunks:
      result = speculate((target.model, target.params), (draft.model, draft.params), [prompt],
                         new, Sampling(temperature), 5, tokenizer.eos_id)
      accepted, verified = accepted + result.accepted, verified + result.verified
    out[f"acceptance_T{temperature:g}"] = accepted / verified
  return out


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--root", type=Path, default=Path("/tmp/pair"))
  parser.add_argument("--target", choices=sorted(TARGETS), default="4x512")
  parser.add_argument("--target_steps", type=int, default=1200)
  parser.add_argument("--draft_steps", type=int, default=1200)
  parser.add_argument("--distill_weight", type=float, default=0.9)
  parser.add_argument("--check_prompts", type=int, default=8)
  parser.add_argument("--new_tokens", type=int, default=64)
  args = parser.parse_args()
  target_dir, draft_dir = args.root / "target", args.root / "draft"
  train(target_dir, args.target_steps, TARGETS[args.target])
  train(draft_dir, args.draft_steps,
        {**DRAFT, "distill.teacher": target_dir, "distill.weight": args.distill_weight})
  report = {"target": str(target_dir), "draft": str(draft_dir)}
  for name, workdir in (("target", target_dir), ("draft", draft_dir)):
    summary = json.loads((workdir / "summary.json").read_text())
    report[f"{name}_eval_loss"] = summary["final_eval_loss"]
    report[f"{name}_params"] = summary["param_count"]
  report.update(agreement(target_dir, draft_dir, args.check_prompts, args.new_tokens))
  print(json.dumps(report, default=np.asarray), flush=True)
  (args.root / "pair.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
  main()
