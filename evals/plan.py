"""The memory plan of a training job, compiled by the target chip's own compiler (or simulated on
N CPU devices), so a shape and mesh can be checked before the job is queued.

  python -m evals.plan --topology=v5e:2x2 --config=configs/efficientllm.py:0.5b \
      --config.batch_size=16 [--program=train|generate|speculative] [--output=plan.json]
  python -m evals.plan --topology=h100:8 --config=configs/efficientllm.py:0.5b
  python -m evals.plan --devices=64 --config=configs/efficientllm.py:3b [--compile=false]

`--topology` names TPU slices (v5e:2x2, v5p:2x2x2, v6e:2x4, ...; through libtpu) or GPUs
(h100:8, h200:8; through XLA's GPU compiler and the project's target descriptions); nothing
runs, no accelerator is needed. Prints a table, then the plan as one JSON line: the chip and
its memory, per-chip arguments / outputs / temporaries / peak, whether it fits, compile time,
the step's FLOPs, the attention implementation `auto` chose, and the largest global batch that
fits (a search with the real compiler) or the remat / grad_accum_steps change that makes the
requested batch fit. A compile failure is one line with the compiler's reason.
"""

import json
import os
import sys

from absl import flags
from ml_collections import config_flags

from efficiency import cli

if __name__ == "__main__" and (_error := cli.config_flag_error(sys.argv)):
  sys.exit(_error)

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/default.py", "Training config file, optionally with :ARG.", lock_config=True
)
_DEVICES = flags.DEFINE_integer("devices", 8, "Devices to plan for (simulated on the CPU).")
_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "Compile for this target instead: v5e:2x2, v5p:2x2x2, v6e:2x4, h100:8, ..."
)
_PROGRAM = flags.DEFINE_enum(
    "program", "train", ["train", "generate", "speculative"], "The program to compile."
)
_SEARCH = flags.DEFINE_boolean(
    "search", True, "With --topology: search the largest batch that fits (several compiles)."
)
_OUTPUT = flags.DEFINE_string("output", None, "Also write the plan as JSON to this file.")
_COMPILE = flags.DEFINE_boolean(
    "compile", True, "Compile the step for XLA's memory analysis (else shardings only)."
)
_MAX_NEW_TOKENS = flags.DEFINE_integer(
    "max_new_tokens", 64, "Decode programs: new tokens per row (the prompt fills the rest of "
    "seq_len; batch_size rows)."
)
_LOCK_WAIT_S = flags.DEFINE_float(
    "lock_wait_s", 600.0, "TPU: how long to wait for another process using libtpu."
)


def _gb(n: int | None) -> str:
  return "-" if n is None else f"{n / 1e9:.2f} GB"


def decode_plan(config, devices, chip, program: str, max_new_tokens: int) -> dict:
  """The decode program (generate or speculative, batch_size rows, the prompt filling seq_len
  less `max_new_tokens`) compiled over a mesh of `devices`: memory and FLOPs."""
  import time

  import jax
  import numpy as np

  from efficiency.serving import generate, speculative
  from efficiency.serving.sampling import Sampling
  from efficiency.serving.weights import decode_form
  from efficiency.sharding.mesh import make_mesh
  from efficiency.sharding.target import platform_of
  from efficiency.train.plan import compile_error
  from efficiency.train.setup import Training

  training = Training(config, mesh=make_mesh(config.mesh, devices))
  params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        training.abstract_state.params, training.state_sharding.params)
  rows, new = config.batch_size, max_new_tokens
  if new >= config.seq_len:
    raise ValueError(f"--max_new_tokens={new} must be below seq_len={config.seq_len}")
  prompt = config.seq_len - new
  args = (jax.ShapeDtypeStruct((rows, prompt), np.int32), jax.ShapeDtypeStruct((rows,), np.int32),
          np.int32(0), np.int32(0), np.arange(rows, dtype=np.int32))
  greedy = Sampling(temperature=0.0)
  # Requests read the model in its decode form, converted once at load (serving.weights): plan
  # that form's params, placed where the conversion compiled for these devices puts them.
  model, unpack = decode_form(training.model)
  with training.context():
    placed = jax.jit(unpack).lower(params).compile().output_shardings
  params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        jax.eval_shape(unpack, params), placed)
  if program == "generate":
    jitted, inputs = generate.program(model, greedy, new, config.seq_len), (params,)
  else:  # the model drafts for itself: the program's shape, not its speed
    jitted = speculative.program(model, model, greedy, greedy, 4, new,
                                 config.seq_len + speculative.rollback(4))
    inputs = (params, params)
  plan = {"program": program, "platform": platform_of(devices), "devices": len(devices),
          "mesh": dict(training.mesh.shape), "batch_size": rows, "prompt_len": prompt,
          "max_new_tokens": new, "attention_impl": None, "max_batch_size": None,
          "chip": None if chip is None else {"name": chip.name, "kind": chip.kind,
                                             "hbm_bytes": chip.hbm_bytes}}
  start = time.perf_counter()
  try:
    with training.context():
      compiled = jitted.lower(*inputs, *args).compile()
  except Exception as e:  # noqa: BLE001  (the compiler's reason is the result)
    return {**plan, "compiled": False, "fits": False, "error": compile_error(e),
            "per_device_bytes": {}}
  memory = compiled.memory_analysis()
  peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes
          - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return {**plan, "compiled": True, "compile_time_s": time.perf_counter() - start,
          "fits": None if chip is None else peak <= chip.hbm_bytes,
          "step_flops_per_device": float(cost.get("flops", 0.0)) if cost else None,
          "per_device_bytes": {"arguments": memory.argument_size_in_bytes,
                               "outputs": memory.output_size_in_bytes,
                               "temp": memory.temp_size_in_bytes, "peak_estimate": peak}}


def _print(plan: dict) -> None:
  chip = plan.get("chip")
  where = f"{plan['devices']} x {chip['kind']} ({_gb(chip['hbm_bytes'])})" if chip else (
      f"{plan['devices']} simulated CPU devices")
  print(f"{plan.get('program', 'train')} on {where}, mesh {plan['mesh']}, batch "
        f"{plan['batch_size']}, attention {plan.get('attention_impl')}")
  for name, size in plan["per_device_bytes"].items():
    print(f"  {name:<16} {_gb(size)} per device")
  if plan.get("compiled") is False:
    print(f"  does not compile: {plan['error']}")
  elif plan.get("compile_time_s") is not None:
    flops = plan.get("step_flops_per_device")
    print(f"  compiled in {plan['compile_time_s']:.1f} s; step FLOPs per device: "
          + (f"{flops / 1e12:.2f} T (XLA)" if flops else "not reported by this compiler")
          + (f", {plan['model_flops_per_device'] / 1e12:.2f} T (model formula)"
             if plan.get("model_flops_per_device") else ""))
  for name, fits in plan.get("fits_on", {}).items():
    print(f"  {name:<20} {'fits' if fits else 'does not fit'}")
  if plan.get("fits") is not None:
    print(f"  {'fits' if plan['fits'] else 'does not fit'} the chip")
  if plan.get("max_batch_size") is not None or "levers" in plan:
    print(f"  largest global batch that fits: {plan.get('max_batch_size')}"
          + (f"; to fit batch {plan['batch_size']}: {plan['levers']}" if plan.get("levers")
             else ""))


def main(argv: list[str]) -> None:
  del argv
  if _DEVICES.value < 1:
    sys.exit(f"error: --devices={_DEVICES.value} is invalid; it must be at least 1")
  chip = None
  if _TOPOLOGY.value is not None:
    from efficiency.sharding import topology

    chip, count = topology.parse(_TOPOLOGY.value)
    topology.check_compiler(_TOPOLOGY.value, chip)
    # Before jax starts: jax stays on the CPU; the target's compiler comes from its devices.
    for key, value in topology.compile_environment().items():
      os.environ.setdefault(key, value)
  else:
    # Before jax starts: N host devices stand in for the job's chips.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={_DEVICES.value}")
    os.environ["JAX_PLATFORMS"] = "cpu"
    count = _DEVICES.value
  import jax

  from efficiency.config import resolve
  from efficiency.errors import ConfigError
  from efficiency.train import plan as plans

  try:
    config = resolve(_CONFIG.value, count, backend=chip.platform if chip else "cpu")
  except ConfigError as e:
    raise ConfigError(f"--topology={_TOPOLOGY.value} ({count} chips): {e}" if chip else e) from e
  devices = jax.devices()
  if chip is not None:
    devices, _ = topology.target_devices(_TOPOLOGY.value, _LOCK_WAIT_S.value)
  if _PROGRAM.value != "train":
    plan = decode_plan(config, devices, chip, _PROGRAM.value, _MAX_NEW_TOKENS.value)
  else:
    plan = plans.memory_plan(config, compile_step=_COMPILE.value, devices=devices, chip=chip)
    out_of_memory = str(plan.get("error", "")).startswith("out of memory")
    if chip is not None and (plan.get("compiled") or out_of_memory) and _SEARCH.value:
      from tqdm import tqdm

      with tqdm(desc="largest batch (compiles)", total=plans.MAX_PROBES, leave=False,
                file=sys.stderr) as bar:
        plan["max_batch_size"] = plans.largest_batch(
            config, devices, chip, plan["fits"], progress=lambda _: bar.update())
      if not plan["fits"]:
        plan["levers"] = plans.levers(config, devices, chip)
    plan.setdefault("max_batch_size", None)
  _print(plan)
  if plan.get("compiled") is False:
    print(f"error: the {_PROGRAM.value} step does not compile for "
          f"{_TOPOLOGY.value or f'{count} CPU devices'}: {plan['error']}", file=sys.stderr)
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      json.dump(plan, f, indent=1)
  print(json.dumps(plan))
  if plan.get("compiled") is False:
    sys.exit(1)


if __name__ == "__main__":
  cli.run(main)
