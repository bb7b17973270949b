"""Hugging Face import and export at Qwen2.5-0.5B sizes: time and peak host memory.

  python benchmarks/hf_convert.py --dir=DIR [--dtype=bfloat16] [--layers=24]

Writes a random checkpoint with Qwen2.5-0.5B's config (24 layers, d_model 896, 14 query and 2
KV heads, d_ff 4864, 151,936-token vocabulary, tied embeddings, QKV biases) as one safetensors
file in DIR/hf, then runs `evals.convert` import (DIR/hf -> DIR/workdir) and export
(DIR/workdir -> DIR/out), each in its own process, and prints a markdown table: wall time,
the child's peak resident memory (ru_maxrss) and the sizes on disk. The tokenizer is the tiny
test fixture's (the model's vocabulary holds it); the weights are random, so no hub is needed.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "hf" / "qwen2"
QWEN25_05B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
    "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
    "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True,
    "max_position_embeddings": 32768, "use_sliding_window": False, "bos_token_id": 151643,
    "eos_token_id": 151643, "torch_dtype": "bfloat16",
}


def write_checkpoint(folder: Path, hf: dict, dtype: np.dtype) -> int:
  """A random checkpoint of `hf`'s shapes in `folder`; returns its parameter count."""
  d, f, v = hf["hidden_size"], hf["intermediate_size"], hf["vocab_size"]
  h = d // hf["num_attention_heads"]
  q, kv = hf["num_attention_heads"] * h, hf["num_key_value_heads"] * h
  rng = np.random.default_rng(0)
  shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
  for i in range(hf["num_hidden_layers"]):
    p = f"model.layers.{i}."
    shapes.update({
        p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
        p + "self_attn.q_proj.weight": (q, d), p + "self_attn.q_proj.bias": (q,),
        p + "self_attn.k_proj.weight": (kv, d), p + "self_attn.k_proj.bias": (kv,),
        p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.v_proj.bias": (kv,),
        p + "self_attn.o_proj.weight": (d, q), p + "mlp.gate_proj.weight": (f, d),
        p + "mlp.up_proj.weight": (f, d), p + "mlp.down_proj.weight": (d, f),
    })
  tensors = {
      name: (0.02 * rng.standard_normal(shape, np.float32)).astype(dtype)
      for name, shape in shapes.items()
  }
  folder.mkdir(parents=True)
  save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
  (folder / "config.json").write_text(json.dumps(hf, indent=2))
  for name in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(FIXTURE / name, folder / name)
  return sum(int(np.prod(s)) for s in shapes.values())


def run(args: list[str]) -> tuple[float, float]:
  """(wall seconds, peak RSS in GB) of `python -m evals.convert ARGS` in its own process."""
  code = (
      "import resource, runpy, sys; sys.argv = ['evals.convert', *sys.argv[1:]]\n"
      "try:\n  runpy.run_module('evals.convert', run_name='__main__')\n"
      "finally:\n  print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
      " file=sys.stderr)\n"
  )
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True,
                        text=True, check=False)
  seconds = time.perf_counter() - start
  if proc.returncode:
    sys.exit(proc.stderr[-3000:])
  peak_kb = next(int(line.split()[1]) for line in proc.stderr.splitlines()
                 if line.startswith("PEAK_KB"))
  return seconds, peak_kb / 2**20


def size_gb(folder: Path) -> float:
  return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e9


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dir", required=True, help="A new folder for the three copies.")
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  parser.add_argument("--layers", type=int, default=24)
  args = parser.parse_args()
  root = Path(args.dir)
  hf = dict(QWEN25_05B, num_hidden_layers=args.layers, torch_dtype=args.dtype)
  dtype = np.dtype(ml_dtypes.bfloat16 if args.dtype == "bfloat16" else np.float32)
  params = write_checkpoint(root / "hf", hf, dtype)
  imported = run([f"--from_hf={root / 'hf'}", f"--workdir={root / 'workdir'}",
                  f"--param_dtype={args.dtype}"])
  exported = run([f"--workdir={root / 'workdir'}", f"--to_hf={root / 'out'}",
                  f"--dtype={args.dtype}"])
  self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  print(f"{params:,} parameters in {args.dtype}; {os.cpu_count()} CPUs; this script's own peak "
        f"(writing the checkpoint) {self_kb / 2**20:.2f} GB\n")
  print("| step | wall s | peak RSS GB | input GB | output GB |")
  print("|---|---|---|---|---|")
  print(f"| import | {imported[0]:.1f} | {imported[1]:.2f} | {size_gb(root / 'hf'):.2f} | "
        f"{size_gb(root / 'workdir'):.2f} (the weights alone) |")
  print(f"| export | {exported[0]:.1f} | {exported[1]:.2f} | {size_gb(root / 'workdir'):.2f} | "
        f"{size_gb(root / 'out'):.2f} |")


if __name__ == "__main__":
  main()
