"""PEFT methods side by side in one process: the compute each saves, and the study's table.

  python -m benchmarks.peft --init_from=PRETRAINED_DIR [--out=peft.json] [--parts=compute,study]
      [--steps=40] [--lrs=3e-4,1e-3,3e-3] [--adapter_lrs=1e-3,3e-3,1e-2] [--rounds=3]
      [--timed_steps=3] [--methods=full,freeze,lora,...] [--large=8,512] [--large_batch=16]
  python -m benchmarks.peft --shape=0.5b [--shape_batch=8] [--flops=0] [--set=FIELD=VALUE,...]
      [--rounds --timed_steps --methods --out]      # the compute table on a GPU (below 8 min)

1. Compute, at the pretrained model's shape and at `--large` (layers, d_model; heads, KV heads
   and d_ff scaled with d_model): per method, the compiled train step's FLOPs (XLA cost
   analysis, scans unrolled), its temporary bytes (XLA memory analysis: activations and
   scratch), the optimizer-state bytes, and the step time relative to full fine-tuning, every
   method's compiled step timed in interleaved rounds on one real batch (the fastest step).
   Beside the methods, `lora_last` (`lora` with `peft.adapter_layers=1`: adapters on the last
   layer, the rest a frozen prefix).
2. The study's table: each method fine-tunes the pretrained model for `--steps` steps at each
   learning rate of `--lrs` (adapter methods: `--adapter_lrs`, since adapters train best at
   higher rates; configs/finetune.py otherwise, warmup a quarter of the steps, at most 20), all
   on the same batches, and is evaluated on the same eval batches.
3. With `--shape`, the compute table alone for a configs/efficientllm.py model (random weights
   and tokens), `--set` overriding config fields (a CPU smoke run of a smaller model).
"""

import argparse
import json
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np

from benchmarks.attention_variants import random_batch
from configs import efficientllm, finetune
from efficiency.config import override as set_field
from efficiency.config import resolve
from efficiency.sharding.mesh import to_global
from efficiency.train.inputs import load_inputs
from efficiency.train.measure import step_flops, step_temp_bytes
from efficiency.train.setup import Training
from efficiency.workdir.restore import restore

METHODS = ("full", "freeze", "lora", "lora_plus", "rslora", "dora", "pissa")
# Compute rows beyond the methods: name -> (method, overrides).
VARIANTS = {"lora_last": ("lora", {"peft.adapter_layers": 1})}


def method_config(init_from: str, method: str, **overrides) -> ml_collections.ConfigDict:
  """configs/finetune.py for `method` from `init_from`, resolved for this process's devices."""
  config = finetune.get_config()
  config.init_from = init_from
  config.peft.method = method
  return resolve(override(config, overrides), jax.device_count())


def shape_config(size: str, method: str, batch: int, fields: str = "",
                 **overrides) -> ml_collections.ConfigDict:
  """configs/finetune.py for `method` on the configs/efficientllm.py SIZE model (bfloat16 compute,
  float32 master weights, its seq_len), random init, `batch` rows; resolved for this process."""
  study = efficientllm.get_config(size)
  config = finetune.get_config()
  config.model, config.seq_len, config.batch_size = study.model, study.seq_len, batch
  config.peft.method = method
  overrides |= dict(item.split("=", 1) for item in filter(None, fields.split(",")))
  return resolve(override(config, overrides), jax.device_count())


def override(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """`config` with dotted fields set (efficiency.config.override each)."""
  for field, value in overrides.items():
    set_field(config, field, value)
  return config


def larger(config: ml_collections.ConfigDict, layers: int, d_model: int):
  """`config` with a wider, deeper model: heads, KV heads and d_ff scale with d_model."""
  config = ml_collections.ConfigDict(config.to_dict())
  m, ratio = config.model, d_model // config.model.d_model
  m.update(num_layers=layers, d_model=d_model, num_heads=m.num_heads * ratio,
           num_kv_heads=m.num_kv_heads * ratio, d_ff=m.d_ff * ratio)
  return config


def compute(configs: dict[str, ml_collections.ConfigDict], local: dict, rounds: int,
            steps: int = 3, flops: bool = True) -> dict[str, dict]:
  """Per method: step FLOPs, temp bytes, optimizer-state bytes and step seconds (the fastest of
  `steps` steps in each of `rounds` interleaved rounds; random init: the time does not depend
  on the weights)."""
  fns, states, batches, out = {}, {}, {}, {}
  for method, config in configs.items():
    training = Training(config)
    fns[method], _ = training.compile(local)
    states[method] = training.init(config.seed)
    batches[method] = to_global(local, training.rows_sharding)
    out[method] = {
        "step_flops": step_flops(training, local) if flops else float("nan"),
        "step_temp_bytes": step_temp_bytes(fns[method]),
        "optimizer_state_bytes": training.optimizer_state_bytes(),
        "trainable_param_count": training.trainable_param_count(),
        "param_count": training.param_count(),
        "seconds": [],
    }
  for _ in range(rounds):
    for method, fn in fns.items():
      states[method], _ = fn(states[method], batches[method])  # warm
      jax.block_until_ready(states[method])
      for _ in range(steps):
        start = time.perf_counter()
        states[method], _ = fn(states[method], batches[method])
        jax.block_until_ready(states[method])
        out[method]["seconds"].append(time.perf_counter() - start)
  for r in out.values():  # the fastest step: the least disturbed by other work on the machine
    r["step_s"] = float(np.min(r["seconds"]))
  return out


def finetune_loss(config, base: dict, train: list[dict], evals: list[dict], token_bytes) -> float:
  """Final eval loss after fine-tuning `base` on the `train` local batches."""
  training = Training(config)
  state = training.init(config.seed, base)
  for local in train:
    state, _ = training.train_step(state, to_global(local, training.rows_sharding))
  batches = [to_global(b, training.rows_sharding) for b in evals]
  return float(training.evaluator(token_bytes)(state, batches)["eval_loss"])


def compute_table(title: str, results: dict[str, dict]) -> None:
  full = results.get("full", next(iter(results.values())))
  print(f"\n{title}\n")
  print("| method | trainable params | % | step time vs full | step FLOPs vs full | "
        "step FLOPs (G) | activation temp (MB) | optimizer state (MB) |")
  print("|---|---|---|---|---|---|---|---|")
  for m, r in results.items():
    print(f"| {m} | {r['trainable_param_count']:,} | "
          f"{100 * r['trainable_param_count'] / r['param_count']:.1f} | "
          f"{r['step_s'] / full['step_s']:.2f} | {r['step_flops'] / full['step_flops']:.2f} | "
          f"{r['step_flops'] / 1e9:.1f} | {r['step_temp_bytes'] / 1e6:.1f} | "
          f"{r['optimizer_state_bytes'] / 1e6:.2f} |")


def study_table(args, methods, lrs, losses, compute_results, configs) -> None:
  print(f"\nStudy table ({args.steps} steps)\n")
  lr_columns = " | ".join(f"loss at rate {i + 1}" for i in range(max(map(len, lrs.values()))))
  timed = bool(compute_results)
  head = "| method | trainable params | optimizer state (MB) | ST (samples/param/s) | AL (s) | " \
      "AL vs full | " if timed else "| method | "
  print(f"{head}{lr_columns} | best |")
  print("|---|" + ("---|" * 5 if timed else "") + "---|" * len(lrs[methods[0]]) + "---|")
  full_s = compute_results["full"]["step_s"] if "full" in compute_results else None
  for m in methods:
    best = min(losses[m], key=losses[m].get)
    cells = " | ".join(f"{losses[m][lr]:.4f} (lr {lr:g})" for lr in lrs[m])
    row = f"| {m} | "
    if timed:
      r, batch = compute_results[m], configs[m].batch_size
      row += (f"{r['trainable_param_count']:,} | {r['optimizer_state_bytes'] / 1e6:.2f} | "
              f"{batch / r['param_count'] / r['step_s']:.2e} | {r['step_s']:.3f} | "
              f"{r['step_s'] / full_s:.2f} | ")
    print(f"{row}{cells} | {losses[m][best]:.4f} (lr {best:g}) |")


def shape_table(args, methods: list[str]) -> None:
  """The compute table at --shape on this process's devices, written to --out."""
  configs = {m: shape_config(args.shape, m, args.shape_batch, args.set) for m in methods}
  configs |= {name: shape_config(args.shape, method, args.shape_batch, args.set, **overrides)
              for name, (method, overrides) in VARIANTS.items()}
  local = random_batch(np.random.default_rng(0), next(iter(configs.values())))
  results = compute(configs, local, args.rounds, args.timed_steps, flops=bool(args.flops))
  kind = jax.devices()[0].device_kind
  seq_len = next(iter(configs.values())).seq_len
  compute_table(f"{args.shape} shape, batch {args.shape_batch} x {seq_len}, on {kind}", results)
  Path(args.out).write_text(json.dumps({"args": vars(args), "device_kind": kind,
                                        "compute": results}, indent=1))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--init_from", help="the pretrained workdir (not with --shape)")
  parser.add_argument("--shape", help="instead: the compute table of a configs/efficientllm.py "
                      "SIZE model, random init (the GPU table; for example 0.5b)")
  parser.add_argument("--shape_batch", type=int, default=8, help="rows of --shape")
  parser.add_argument("--flops", type=int, default=1, help="0: skip the unrolled FLOP count")
  parser.add_argument("--set", default="", help="with --shape: FIELD=VALUE,... config overrides")
  parser.add_argument("--out", default="peft.json")
  parser.add_argument("--parts", default="compute,study", help="compute, study or both")
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--lrs", default="3e-4,1e-3,3e-3", help="full and freeze")
  parser.add_argument("--adapter_lrs", default="1e-3,3e-3,1e-2", help="adapter methods")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--timed_steps", type=int, default=3, help="steps per method per round")
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--large", default="8,512", help="layers,d_model of the larger shape")
  parser.add_argument("--large_batch", type=int, default=16, help="rows of the larger shape")
  args = parser.parse_args()
  methods = args.methods.split(",")
  rates = lambda text: [float(x) for x in text.split(",")]
  lrs = {m: rates(args.lrs if m in ("full", "freeze") else args.adapter_lrs) for m in methods}
  parts = args.parts.split(",")
  layers, d_model = (int(x) for x in args.large.split(","))
  if args.shape:
    shape_table(args, methods)
    return
  if not args.init_from:
    parser.error("--init_from is required without --shape")
  warmup = min(20, args.steps // 4)
  configs = {m: method_config(args.init_from, m, steps=args.steps,
                              **{"optimizer.warmup_steps": warmup}) for m in methods}
  timed = configs | {name: method_config(args.init_from, method, steps=args.steps,
                                         **{"optimizer.warmup_steps": warmup}, **overrides)
                     for name, (method, overrides) in VARIANTS.items()}
  inputs = load_inputs(next(iter(configs.values())))
  train = [next(inputs.train) for _ in range(args.steps)]
  token_bytes = np.asarray(inputs.tokenizer.token_bytes, np.float32)

  report = {"args": vars(args), "devices": jax.device_count(),
            "device_kind": jax.devices()[0].device_kind, "compute": {}}
  if "compute" in parts:
    report["compute"] = compute(timed, train[0], args.rounds, args.timed_steps)
    compute_table("Default shape (the pretrained model)", report["compute"])
    large = {m: larger(c, layers, d_model) for m, c in timed.items()}
    for c in large.values():
      c.batch_size = args.large_batch
    rows = {k: v[: args.large_batch] for k, v in train[0].items()}
    report["compute_large"] = compute(large, rows, args.rounds, args.timed_steps)
    compute_table(f"Larger shape ({layers} layers, d_model {d_model}, batch "
                  f"{args.large_batch})", report["compute_large"])
    Path(args.out).write_text(json.dumps(report, indent=1))
  if "study" not in parts:
    return

  base = restore(args.init_from).params
  before = finetune_loss(configs[methods[0]], base, [], inputs.eval_batches, token_bytes)
  report["eval_loss_before"] = before
  print(f"eval loss before fine-tuning: {before:.4f}", flush=True)
  losses = {}
  for m in methods:
    losses[m] = {}
    for lr in lrs[m]:
      config = ml_collections.ConfigDict(configs[m].to_dict())
      config.optimizer.lr = lr
      losses[m][lr] = finetune_loss(config, base, train, inputs.eval_batches, token_bytes)
      print(f"{m} lr={lr:g}: eval loss {losses[m][lr]:.4f}", flush=True)
  report["eval_loss"] = {m: {str(lr): v for lr, v in d.items()} for m, d in losses.items()}
  study_table(args, methods, lrs, losses, report["compute"], configs)
  Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
