"""The study's MoE train step compiled for TPU chips on a CPU host (libtpu, no TPU needed):
per-chip temporaries of 0.5b-moe with dropless and capacity dispatch against the dense 0.5b at
equal batch, and the largest batch each fits in a chip.

  pip install libtpu==0.0.42.1   # pairs with jax 0.10.2; not a project dependency
  python benchmarks/moe_tpu.py [--topology v5e:2x2] [--size 0.5b] [--fsdp 2 --expert 2]
      [--batch 16] [--seq_len 2048] [--fit 16,24,32,48,64]

Each arm is `configs/efficientllm.py:SIZE[-moe]` with `model.attention_impl=xla` and, for MoE,
`model.moe.grouped_matmul=ragged_dot` (the compile happens on a CPU host, so `auto` would pick
the CPU form). An arm that does not fit reports libtpu's out-of-memory line. libtpu compiles one
process at a time (a lock file in the temp directory).
"""

import argparse
import os

os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
from jax.experimental import topologies  # noqa: E402

from configs.efficientllm import get_config  # noqa: E402
from efficiency.config import resolve  # noqa: E402
from efficiency.sharding.mesh import make_mesh  # noqa: E402
from efficiency.train.setup import Training  # noqa: E402


def compile_step(arg: str, devices, args, batch: int, dispatch: str | None) -> dict:
  """Per-chip bytes of the compiled train step, or the compiler's out-of-memory line."""
  config = get_config(arg)
  config.update(batch_size=batch, seq_len=args.seq_len)
  config.model.attention_impl = "xla"
  config.mesh.update(data=1, fsdp=args.fsdp, tensor=1, expert=args.expert)
  if dispatch:
    config.model.moe.update(dispatch=dispatch, grouped_matmul="ragged_dot")
  config = resolve(config, num_devices=len(devices), backend="tpu")
  training = Training(config, mesh=make_mesh(config.mesh, devices))
  example = {k: np.zeros((1, args.seq_len), np.float32 if k == "weights" else np.int32)
             for k in ("inputs", "targets", "segment_ids", "positions", "weights")}
  try:
    compiled, seconds = training.compile(example)
  except Exception as e:  # noqa: BLE001 - libtpu reports an out-of-memory compile this way
    lines = str(e).splitlines()
    line = next((x for x in lines if "RESOURCE_EXHAUSTED" in x), str(e)[:200])
    return {"error": line.strip()}
  memory = compiled.memory_analysis()
  return {
      "temp_gb": memory.temp_size_in_bytes / 1e9,
      "args_gb": memory.argument_size_in_bytes / 1e9,
      "compile_s": seconds,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--topology", default="v5e:2x2")
  parser.add_argument("--size", default="0.5b")
  parser.add_argument("--fsdp", type=int, default=2)
  parser.add_argument("--expert", type=int, default=2)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--seq_len", type=int, default=2048)
  parser.add_argument("--fit", default="", help="batch sizes to try for the largest that fits")
  args = parser.parse_args()
  devices = topologies.get_topology_desc(platform="tpu", topology_name=args.topology).devices
  arms = {
      f"{args.size} dense": (args.size, None),
      f"{args.size}-moe dropless": (f"{args.size}-moe", "dropless"),
      f"{args.size}-moe capacity": (f"{args.size}-moe", "capacity"),
  }
  print(f"| arm ({args.topology}, fsdp {args.fsdp} x expert {args.expert}) | batch | "
        "temp GB per chip | arguments GB per chip | compile s |")
  print("|---|---|---|---|---|")
  for name, (arg, dispatch) in arms.items():
    r = compile_step(arg, devices, args, args.batch, dispatch)
    if "error" in r:
      print(f"| {name} | {args.batch} | {r['error']} | | |", flush=True)
    else:
      print(f"| {name} | {args.batch} | {r['temp_gb']:.2f} | {r['args_gb']:.2f} "
            f"| {r['compile_s']:.0f} |", flush=True)
  for name, (arg, dispatch) in arms.items():
    fits = None
    for batch in [int(b) for b in args.fit.split(",") if b]:
      r = compile_step(arg, devices, args, batch, dispatch)
      if "error" in r:
        break
      fits = batch
    if args.fit:
      print(f"largest batch that fits, {name}: {fits}", flush=True)


if __name__ == "__main__":
  main()
