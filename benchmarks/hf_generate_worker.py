"""The transformers side of benchmarks/hf_generate.py, run with an interpreter that has torch and
transformers (not the project's environment).

  PYTHON benchmarks/hf_generate_worker.py --folder=HF_FOLDER

Loads the exported folder in float32, prints "ready", then answers one JSON request per stdin line,
{"ids": [[...], ...], "new": N}, with {"seconds": S, "tokens": [[...], ...]}: greedy generate of
exactly N new tokens for the batch (no EOS stop), timed around the call.
"""

import argparse
import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--folder", required=True)
  args = parser.parse_args()
  model = AutoModelForCausalLM.from_pretrained(args.folder, dtype=torch.float32).eval()
  model.generation_config.eos_token_id = None
  model.generation_config.pad_token_id = 0
  print("ready", flush=True)
  for line in sys.stdin:
    request = json.loads(line)
    ids = torch.tensor(request["ids"], dtype=torch.long)
    new = request["new"]
    with torch.inference_mode():
      start = time.perf_counter()
      out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                           min_new_tokens=new, do_sample=False)
      seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "tokens": out[:, ids.shape[1]:].tolist()}), flush=True)


if __name__ == "__main__":
  main()
