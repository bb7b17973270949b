"""Measures the efficiency study's metrics for a run's config and writes DIR/efficiency.json.

  python -m evals.efficiency --workdir=DIR [--mode=train] [--steps=20] [--interval=0.1]

Train mode rebuilds DIR's model from DIR/config.json, restores DIR's newest checkpoint (or
initializes one), and times `--steps` training steps on DIR's data, each one run to completion,
while a background sampler reads memory, utilization and power. It changes nothing in DIR but
efficiency.json. Each metric is written with its unit and how it was measured; a metric that
cannot be measured here is null, with the reason.
"""

import json
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import ml_collections
from absl import app, flags
from tqdm import tqdm

from data.pipeline import make_train_iterator
from data.tokenizer import get_tokenizer
from efficiency.config import ConfigError, resolve
from efficiency.metrics import study
from efficiency.metrics.peak import peak_flops_total
from efficiency.metrics.sampler import Sampler
from efficiency.metrics.writer import write_json_atomic
from efficiency.model.flops import flops_per_token
from efficiency.sharding.mesh import make_mesh, to_global
from efficiency.sharding.rules import LOGICAL_AXIS_RULES
from efficiency.train import checkpoint
from efficiency.train.setup import Training, lower_and_compile

MODES = ("train",)  # inference metrics (IT) join when KV-cache decoding lands

_WORKDIR = flags.DEFINE_string("workdir", None, "A train.py workdir (needs config.json).")
_MODE = flags.DEFINE_string("mode", "train", f"What to measure; one of {MODES}.")
_STEPS = flags.DEFINE_integer("steps", 20, "Measured iterations (after 2 warm-up steps).")
_INTERVAL = flags.DEFINE_float("interval", 0.1, "Seconds between memory/power samples.")


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
      iterations.append(study.Iteration(time.perf_counter() - start, tokens=tokens))
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
  quant_report = workdir / "quant_report.json"
  mcr = json.loads(quant_report.read_text()).get("mcr") if quant_report.exists() else None
  return {
      "mode": "train",
      "steps": steps,
      "checkpoint": "restored" if restored is not None else "freshly initialized",
      "param_count": params,
      "devices": jax.device_count(),
      "device_kind": jax.devices()[0].device_kind,
      "metrics": {
          "AMU": metric(study.amu(samples), "bytes",
                        f"time-average of {sampler.sources['memory']}, sampled every "
                        f"{interval_s}s ({len(samples)} samples)"),
          "PCU": pcu_metric,
          "AL": metric(study.al(iterations), "s",
                       "mean wall time per training step, run to completion"),
          "TT": metric(study.tt(iterations, params), "tokens/param/s",
                       "sum(real tokens / params) / sum(step seconds)"),
          "AEC": metric(aec, "W", f"time-average of {sampler.sources['power']}"),
          "MCR": metric(mcr, "ratio",
                        "from quant_report.json" if mcr is not None
                        else "null: no quantized export (quant_report.json) in the workdir"),
      },
  }


def main(argv: list[str]) -> None:
  del argv
  if not _WORKDIR.value:
    sys.exit("error: --workdir is required")
  if _MODE.value not in MODES:
    sys.exit(f"error: --mode={_MODE.value!r} is invalid; valid choices: {list(MODES)}")
  workdir = Path(_WORKDIR.value)
  try:
    report = measure_train(workdir, _STEPS.value, _INTERVAL.value)
  except (ConfigError, ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  write_json_atomic(workdir / "efficiency.json", report)
  for name, m in report["metrics"].items():
    print(f"{name:4s} {m['value']!s:>24} {m['unit']:15s} {m['how']}")


if __name__ == "__main__":
  app.run(main)
