"""Our on-device greedy generation against Hugging Face transformers' generate on the same weights.

  python -m benchmarks.hf_generate --workdir=RUN --torch_python=PYTHON [--batches 1 8]
      [--prompt_tokens 64] [--max_new_tokens 64] [--rounds 5] [--out hf_generate.json]

PYTHON is an interpreter with torch and transformers, kept out of the project's environment (for
example `python -m venv /tmp/hf && /tmp/hf/bin/pip install torch transformers`). The run's
model is exported with efficiency.hf (as `evals.convert --to_hf` does) to a temporary folder in
float32, which a worker (benchmarks/hf_generate_worker.py) loads with transformers. For each batch
size, our generation (efficiency.serving.generate: one jitted program, compilation excluded) and
transformers' `generate` (greedy, exactly --max_new_tokens new tokens, no EOS stop) take turns
on the same prompts, the first --prompt_tokens tokens of validation documents; the worker idles
while ours runs. Prints tokens/s of both (median over --rounds), the ratio, and whether the
greedy tokens are identical.
"""

import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from efficiency.hf.convert import export_checkpoint
from efficiency.serving.generate import run
from efficiency.serving.loading import load_model, validation_prompts
from efficiency.serving.sampling import Sampling
from efficiency.train.inputs import tokenizer_of

ROOT = Path(__file__).resolve().parents[1]
GREEDY = Sampling(temperature=0.0)


def hf_worker(python: str, folder: Path) -> subprocess.Popen:
  """The transformers worker process, once it has loaded `folder`."""
  script = ROOT / "benchmarks" / "hf_generate_worker.py"
  proc = subprocess.Popen([python, str(script), f"--folder={folder}"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)
  if not proc.stdout.readline().startswith("ready"):
    raise RuntimeError(f"the transformers worker did not start ({python}); does it have torch "
                       "and transformers?")
  return proc


def hf_generate(proc: subprocess.Popen, prompts: list[np.ndarray], new: int) -> dict:
  proc.stdin.write(json.dumps({"ids": [p.tolist() for p in prompts], "new": new}) + "\n")
  proc.stdin.flush()
  return json.loads(proc.stdout.readline())


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--torch_python", required=True)
  parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
  parser.add_argument("--prompt_tokens", type=int, default=64)
  parser.add_argument("--max_new_tokens", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--out", default="hf_generate.json")
  args = parser.parse_args()
  trained = load_model(args.workdir)
  tokenizer = tokenizer_of(trained.config)
  prompts = validation_prompts(trained.config, tokenizer, max(args.batches), args.prompt_tokens)
  new = args.max_new_tokens
  results = {"settings": vars(args), "rows": []}
  with tempfile.TemporaryDirectory() as tmp:
    folder = Path(tmp) / "hf"
    export_checkpoint(args.workdir, folder, dtype="float32", progress=False)
    worker = hf_worker(args.torch_python, folder)
    print("| batch | ours tokens/s | transformers tokens/s | ours / transformers | "
          "same greedy tokens |")
    print("|---|---|---|---|---|")
    for b in args.batches:
      rows = prompts[:b]
      ours_s, hf_s, same = [], [], True
      run(trained.model, trained.params, rows, new, GREEDY, eos_id=None)  # compile
      hf_generate(worker, rows, new)  # warm
      for _ in range(args.rounds):
        ours = run(trained.model, trained.params, rows, new, GREEDY, eos_id=None)
        theirs = hf_generate(worker, rows, new)
        ours_s.append(ours.decode_s)
        hf_s.append(theirs["seconds"])
        same &= all(np.array_equal(o, t) for o, t in zip(ours.tokens, theirs["tokens"],
                                                          strict=True))
      tokens = b * new
      row = {"batch": b, "ours_tokens_per_s": tokens / statistics.median(ours_s),
             "hf_tokens_per_s": tokens / statistics.median(hf_s), "same_tokens": same,
             "ours_s": ours_s, "hf_s": hf_s}
      row["ratio"] = row["ours_tokens_per_s"] / row["hf_tokens_per_s"]
      results["rows"].append(row)
      print(f"| {b} | {row['ours_tokens_per_s']:.0f} | {row['hf_tokens_per_s']:.0f} | "
            f"{row['ratio']:.2f} | {same} |", flush=True)
    worker.stdin.close()
    worker.wait()
  Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
  main()
