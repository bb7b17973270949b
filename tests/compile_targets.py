"""Compiles small train steps (and one decode program) for a target topology and prints one JSON
line per case: whether it compiled, the attention implementation `auto` chose, the largest
operand of the fused-kernel calls against one device's share of the query, and the memory.

  python -m tests.compile_targets v5e:2x2 gqa_fsdp,moe_expert [--strip-shard-map]

Runs in its own process (libtpu: one process at a time; tests take `libtpu_lock()` around it).
`--strip-shard-map` calls the fused kernels bare, to check that the tests catch it.
"""

import os
import sys

from efficiency.sharding import topology

if __name__ == "__main__":
  for _key, _value in topology.compile_environment().items():
    os.environ.setdefault(_key, _value)

import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402

import numpy as np  # noqa: E402

from configs.finetune import get_config as get_finetune_config  # noqa: E402
from efficiency.attention import attention_impl  # noqa: E402
from efficiency.config import resolve  # noqa: E402
from efficiency.sharding.mesh import make_mesh  # noqa: E402
from efficiency.train.plan import BATCH_DTYPES, compile_error  # noqa: E402
from efficiency.train.setup import Training  # noqa: E402
from tests.helpers import tiny_config, tiny_model_config  # noqa: E402

SEQ_LEN = 128
# Kernel calls in compiled HLO: Mosaic (TPU), Triton (Pallas on GPU), cuDNN attention.
KERNEL_TARGETS = ("tpu_custom_call", "__gpu$xla.gpu.triton", "__cudnn$fmha")
SHAPE = re.compile(r"\b(?:bf16|f16|f32|s32)\[([\d,]*)\]")


def case_config(name: str, devices: int):
  """The tiny config of case `name` on `devices` chips (bfloat16, rows of SEQ_LEN)."""
  model = dict(dtype="bfloat16", num_heads=4, num_kv_heads=2, d_model=256, d_ff=256)
  mesh = {"fsdp": -1}
  overrides = {}
  if name == "pallas_fsdp":
    model["attention_impl"] = "pallas_gpu"
  elif name == "gqa_data_tensor":
    mesh = {"data": -1, "tensor": 2}
  elif name in ("mla", "nsa", "sliding"):
    model["attention"] = name
  elif name == "moe_expert":
    model["moe"] = {"num_experts": 4}
    mesh = {"fsdp": -1, "expert": 2}
  elif name == "int8":
    overrides["quant"] = {"mode": "int8"}
  if name == "peft_lora":
    config = get_finetune_config()
    config.model = tiny_model_config(**model)
    config.peft.update(method="lora", rank=4)
  else:
    config = tiny_config()
    config.model = tiny_model_config(**model)
    for key, value in overrides.items():
      config[key].update(value)
  config.update(batch_size=2 * devices, seq_len=SEQ_LEN, steps=4)
  config.mesh.update(data=1, fsdp=1, tensor=1, expert=1)
  config.mesh.update(mesh)
  return config


def kernel_operand_elements(hlo: str) -> list[int]:
  """Element counts of every array operand and result of the fused-kernel calls in `hlo` (the
  TPU compiler prints only the results' shapes; a kernel's results are shaped by its inputs)."""
  sizes = []
  for line in attention_kernel_calls(hlo):
    sizes += [math.prod(int(d) for d in dims.split(",") if d) for dims in SHAPE.findall(line)]
  return sizes


def attention_kernel_calls(hlo: str) -> list[str]:
  """The HLO lines calling a fused attention kernel (on TPU, MoE's ragged_dot is a Mosaic
  kernel too: its calls are left out)."""
  return [line for line in hlo.splitlines()
          if "custom-call(" in line and any(f'"{t}' in line for t in KERNEL_TARGETS)
          and "ragged" not in line]


def run_case(name: str, devices, chip) -> dict:
  config = resolve(case_config(name, len(devices)), len(devices), backend=chip.platform)
  if name == "decode":
    from evals.plan import decode_plan

    plan = decode_plan(config, devices, chip, "generate", max_new_tokens=16)
    return {k: plan.get(k) for k in ("compiled", "error", "fits", "attention_impl")}
  training = Training(config, mesh=make_mesh(config.mesh, devices))
  mesh = dict(training.mesh.shape)
  result = {"attention_impl": attention_impl(config, chip.platform), "mesh": mesh}
  compiled, _ = training.compile({k: np.zeros((1, 1), t) for k, t in BATCH_DTYPES.items()})
  memory = compiled.memory_analysis()
  hlo = compiled.as_text()
  m = config.model
  rows = math.prod(mesh[a] for a in ("data", "fsdp", "expert"))
  heads = mesh["tensor"] if m.num_kv_heads % mesh["tensor"] == 0 else 1
  head_dim = m.head_dim if m.head_dim > 0 else m.d_model // m.num_heads
  b, t = config.batch_size, SEQ_LEN
  # Splash keeps its per-query softmax statistics broadcast over the 128 TPU lanes.
  width = max(head_dim, 128) if chip.platform == "tpu" else head_dim
  result.update(
      compiled=True, temp_bytes=memory.temp_size_in_bytes,
      # The largest kernel array one device holds: its queries (or splash's lane-wide
      # statistics), or cuDNN's mask of its rows. Gathered inputs would be rows x heads larger.
      kernel_operand_bound=max(b * t * m.num_heads * width // (rows * heads), b * t * t // rows),
      kernel_operand_elements=max(kernel_operand_elements(hlo), default=0),
      kernel_calls=len(attention_kernel_calls(hlo)),
      all_gathers=len(re.findall(r"\ball-gather(?:-start)?\(", hlo)),
  )
  return result


def main(target: str, names: list[str], strip: bool) -> None:
  if strip:  # the fused kernels called bare on the sharded arrays
    from efficiency.attention.kernels import shard

    shard.on_mesh = lambda attend, mesh, *args: attend(*args)
    import efficiency.attention.kernels as kernels

    kernels.on_mesh = shard.on_mesh
  devices, chip = topology.target_devices(target)
  for name in names:
    try:
      result = run_case(name, devices, chip)
    except Exception as e:  # noqa: BLE001  (reported per case)
      result = {"compiled": False, "error": compile_error(e)}
    print(json.dumps({"case": name, **result}), flush=True)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2].split(","), "--strip-shard-map" in sys.argv[3:])
