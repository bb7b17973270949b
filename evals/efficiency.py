"""Measures the efficiency study's metrics for a run and writes them to DIR/efficiency.json.

  python -m evals.efficiency --workdir=DIR [--mode=train|infer] [--steps=20] [--interval=0.1]
      [--quant=none|8|4] [--batch=1 --prompt_len=64 --new_tokens=64]

Train mode rebuilds DIR's model from DIR/config.json, restores DIR's newest checkpoint (or
initializes one), and times `--steps` training steps on DIR's data, each one run to completion.
Infer mode restores DIR's newest checkpoint (converted to int8 or int4 with --quant) and times
`--steps` requests, each a greedy KV-cache generation of --new_tokens tokens for --batch prompts
of --prompt_len tokens from DIR's validation split. Either way a background sampler reads memory,
utilization and power meanwhile. efficiency.json holds one section per mode ({"train": ...,
"infer": ...}); a run updates only its own, and nothing else in DIR changes. Each metric is written
with its unit and how it was measured; a metric that cannot be measured here is null, with the
reason.
"""

import json
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import app, flags
from tqdm import tqdm

from data.pipeline import make_eval_batches, make_train_iterator
from data.tokenizer import get_tokenizer
from efficiency.config import ConfigError, resolve
from efficiency.decode.generate import generate
from efficiency.decode.loading import load_model
from efficiency.decode.sampling import Sampling
from efficiency.metrics import study
from efficiency.metrics.peak import peak_flops_total
from efficiency.metrics.sampler import Sampler
from efficiency.metrics.writer import write_json_atomic
from efficiency.model.flops import flops_per_token
from efficiency.sharding.mesh import make_mesh, to_global
from efficiency.sharding.rules import LOGICAL_AXIS_RULES
from efficiency.train import checkpoint
from efficiency.train.setup import Training, lower_and_compile

MODES = ("train", "infer")

_WORKDIR = flags.DEFINE_string("workdir", None, "A train.py workdir (needs config.json).")
_MODE = flags.DEFINE_string("mode", "train", f"What to measure; one of {MODES}.")
_STEPS = flags.DEFINE_integer(
    "steps", 20, "Measured iterations: train steps (after 2 warm-up steps) or infer requests."
)
_INTERVAL = flags.DEFINE_float("interval", 0.1, "Seconds between memory/power samples.")
_QUANT = flags.DEFINE_enum("quant", "none", ["none", "8", "4"], "infer: weight bits of the model.")
_BATCH = flags.DEFINE_integer("batch", 1, "infer: prompts per request.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 64, "infer: prompt tokens (from eval data).")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 64, "infer: tokens generated per prompt.")


def load_config(workdir: Path) -> ml_collections.ConfigDict:
  path = workdir / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist; --workdir must be a train.py workdir")
  config = ml_collections.ConfigDict(json.loads(path.read_text()))
  return resolve(config, jax.device_count(), jax.process_count())


def metric(value, unit: str, how: str) -> dict:
  return {"value": value, "unit": unit, "how": how}


def measure_train(workdir: Path, steps: int, interval_s: float) -> dict:
  """Times `steps` training steps of the workdir's config under the sampler."""
  config = load_config(workdir)
  tokenizer = get_tokenizer(config)
  iterator = make_train_iterator(
      config, tokenizer, process_index=jax.process_index(), process_count=jax.process_count()
  )
  mesh = make_mesh(config.mesh)
  with mesh, nn.logical_axis_rules(LOGICAL_AXIS_RULES):
    training = Training(config, mesh)
    manager = checkpoint.make_manager(workdir, config.keep_checkpoints)
    restored = checkpoint.restore_latest(manager, training.abstract_state, iterator)
    manager.close()
    state = training.init(config.seed) if restored is None else restored[0]
    first = next(iterator)
    step_fn, _ = lower_and_compile(training, training.abstract_batch(first))
    for _ in range(2):
      state, _ = step_fn(state, to_global(next(iterator), training.rows_sharding))
    jax.block_until_ready(state)

    iterations = []
    sampler = Sampler(interval_s).start()
    for _ in tqdm(range(steps), desc="measure", unit="step"):
      start = time.perf_counter()
      local = next(iterator)
      state, _ = step_fn(state, to_global(local, training.rows_sharding))
      jax.block_until_ready(state)
      tokens = int(local["weights"].sum()) * jax.process_count()
      iterations.append(study.Iteration(
          time.perf_counter() - start, tokens=tokens, samples=config.batch_size
      ))
    samples = sampler.stop()

  params = training.param_count()
  peak, peak_how = peak_flops_total(config.model.dtype)
  positions = config.batch_size * config.seq_len
  mfu = flops_per_token(config.model, config.seq_len) * positions * steps / (
      sum(i.seconds for i in iterations) * peak
  )
  pcu = study.pcu(samples)
  pcu_metric = (
      metric(pcu, "fraction", f"time-average of {sampler.sources['utilization']}")
      if pcu is not None
      else metric(mfu, "fraction", f"MFU over the measured steps (no NVML here); peak: {peak_how}")
  )
  aec = study.aec(samples)
  return {
      "mode": "train",
      "steps": steps,
      "checkpoint": "restored" if restored is not None else "freshly initialized",
      "param_count": params,
      "devices": jax.device_count(),
      "device_kind": jax.devices()[0].device_kind,
      "metrics": {
          "AMU": _amu_metric(samples, sampler, interval_s),
          "PCU": pcu_metric,
          "AL": metric(study.al(iterations), "s",
                       "mean wall time per training step, run to completion"),
          "TT": metric(study.tt(iterations, params), "tokens/param/s",
                       "sum(real tokens / params) / sum(step seconds)"),
          "ST": metric(study.st(iterations, params), "samples/param/s",
                       f"sum(rows / params) / sum(step seconds); a sample is one "
                       f"{config.seq_len}-token row, params are the whole model's"),
          "AEC": metric(aec, "W", f"time-average of {sampler.sources['power']}"),
          "MCR": _mcr_metric(workdir),
      },
  }


def measure_infer(
    workdir: Path, requests: int, interval_s: float, quant_bits: int | None, batch: int,
    prompt_len: int, new_tokens: int,
) -> dict:
  """Times `requests` greedy KV-cache generations of the workdir's (optionally quantized) model."""
  if min(batch, prompt_len, new_tokens) < 1:
    raise ConfigError(
        f"batch={batch}, prompt_len={prompt_len} and new_tokens={new_tokens} must all be >= 1"
    )
  model, params, config = load_model(str(workdir), quant_bits)
  tokenizer = get_tokenizer(config)
  rows = np.concatenate([
      b["inputs"] for b in make_eval_batches(config, tokenizer, process_index=0, process_count=1)
  ])
  if rows.shape[1] < prompt_len:
    raise ConfigError(f"prompt_len={prompt_len} exceeds the run's seq_len={rows.shape[1]}")
  greedy = Sampling(temperature=0.0)

  def request(i: int) -> list[np.ndarray]:
    chosen = [rows[(i * batch + j) % len(rows), :prompt_len] for j in range(batch)]
    return generate(model, params, chosen, new_tokens, greedy, eos_id=None)

  request(0)  # compiles prefill and decode shapes
  iterations = []
  sampler = Sampler(interval_s).start()
  for i in tqdm(range(requests), desc="measure", unit="request"):
    start = time.perf_counter()
    generated = sum(len(out) for out in request(i + 1))
    iterations.append(study.Iteration(time.perf_counter() - start, tokens=generated))
  samples = sampler.stop()

  seconds = sum(i.seconds for i in iterations)
  tokens = sum(i.tokens for i in iterations)
  pcu = study.pcu(samples)
  how_model = f"int{quant_bits} weights (efficiency.quant.export)" if quant_bits else "as trained"
  return {
      "mode": "infer",
      "requests": requests,
      "model": how_model,
      "batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens,
      "param_count": int(sum(x.size for x in jax.tree.leaves(params))),
      "devices": jax.device_count(),
      "device_kind": jax.devices()[0].device_kind,
      "metrics": {
          "AMU": _amu_metric(samples, sampler, interval_s),
          "PCU": metric(pcu, "fraction", f"time-average of {sampler.sources['utilization']}"
                        if pcu is not None else "null: no NVML utilization on this device"),
          "AL": metric(study.al(iterations), "s",
                       f"mean wall time per request: prefill of {batch} x {prompt_len} tokens "
                       f"and {new_tokens} greedy KV-cache decode steps"),
          "IT": metric(study.it(tokens, seconds), "tokens/s",
                       "generated tokens / wall seconds over all requests"),
          "AEC": metric(study.aec(samples), "W", f"time-average of {sampler.sources['power']}"),
          "MCR": _mcr_metric(workdir),
      },
  }


def _amu_metric(samples: list[study.Sample], sampler: Sampler, interval_s: float) -> dict:
  return metric(study.amu(samples), "bytes",
                f"time-average of {sampler.sources['memory']}, sampled every {interval_s}s "
                f"({len(samples)} samples)")


def _mcr_metric(workdir: Path) -> dict:
  quant_report = workdir / "quant_report.json"
  mcr = json.loads(quant_report.read_text()).get("mcr") if quant_report.exists() else None
  return metric(mcr, "ratio", "from quant_report.json" if mcr is not None
                else "null: no quantized export (quant_report.json) in the workdir")


def main(argv: list[str]) -> None:
  del argv
  if not _WORKDIR.value:
    sys.exit("error: --workdir is required")
  if _MODE.value not in MODES:
    sys.exit(f"error: --mode={_MODE.value!r} is invalid; valid choices: {list(MODES)}")
  workdir = Path(_WORKDIR.value)
  try:
    if _MODE.value == "train":
      report = measure_train(workdir, _STEPS.value, _INTERVAL.value)
    else:
      report = measure_infer(
          workdir, _STEPS.value, _INTERVAL.value, int(_QUANT.value) if _QUANT.value != "none"
          else None, _BATCH.value, _PROMPT_LEN.value, _NEW_TOKENS.value,
      )
  except (ConfigError, ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  path = workdir / "efficiency.json"
  sections = json.loads(path.read_text()) if path.exists() else {}
  write_json_atomic(path, {**sections, _MODE.value: report})
  for name, m in report["metrics"].items():
    print(f"{name:4s} {m['value']!s:>24} {m['unit']:15s} {m['how']}")


if __name__ == "__main__":
  app.run(main)
