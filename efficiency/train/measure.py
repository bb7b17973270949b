"""The efficiency study's training metrics of a run (evals.efficiency --mode=train): `steps`
training steps of the workdir's config on its data, each run to completion, timed while a
background sampler reads memory, utilization and power; and what XLA reports of the compiled
train step (its FLOPs and temporary memory)."""

import time
from pathlib import Path

import jax
import ml_collections
from tqdm import tqdm

from efficiency.metrics import study
from efficiency.metrics.peak import Mfu, peak_flops_total
from efficiency.metrics.profile import ProfileWindow
from efficiency.metrics.sampler import Sampler
from efficiency.model.flops import flops_per_token
from efficiency.sharding.mesh import to_global
from efficiency.train.inputs import load_inputs
from efficiency.train.setup import Training
from efficiency.workdir import files
from efficiency.workdir.restore import load_teacher, restore

WARM_STEPS = 2  # run (and left out of the timing) after compiling


def step_flops(training: Training, example: dict) -> float:
  """FLOPs of one train step from XLA's cost analysis, compiled with the layer scans unrolled
  (the analysis counts a loop body once) but otherwise as `training` runs it."""
  unrolled = Training(
      training.config, training.mesh, unroll_layers=True, teacher=training.teacher
  )
  cost = unrolled.compile(example)[0].cost_analysis()
  return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def step_temp_bytes(compiled: jax.stages.Compiled) -> int:
  """Temporary (activation and scratch) bytes of a compiled step, from XLA's memory analysis."""
  return int(compiled.memory_analysis().temp_size_in_bytes)


def measure_train(
    workdir: str | Path, config: ml_collections.ConfigDict, steps: int, interval_s: float,
    profile: ProfileWindow | None = None,
) -> dict:
  """The `train` section of efficiency.json for the run in `workdir` (its config resolved for
  these devices): AMU, PCU, AL, TT, ST, AEC and MCR, each with how it was measured. The
  parameters are the workdir's newest checkpoint (fresh when it has none). Steps are measured at
  full length: sequence-length warmup, which shortens a run's first steps, is left off.
  `profile` traces its window of the measured steps (numbered from 1)."""
  workdir = Path(workdir)
  config = ml_collections.ConfigDict(config.to_dict())
  config.data.seq_len_warmup.start = 0
  inputs = load_inputs(config, jax.process_index(), jax.process_count(), evaluation=False)
  training = Training(config, teacher=load_teacher(config))
  restored = files.checkpoint_steps(workdir)
  state = training.init(config.seed, restore(workdir).params if restored else None)
  example = next(inputs.train)
  step_fn, _ = training.compile(example)
  flops = step_flops(training, example)
  for _ in range(WARM_STEPS):
    state, _ = step_fn(
        state, to_global(next(inputs.train), training.rows_sharding), *training.step_extras
    )
  jax.block_until_ready(state)

  iterations = []
  sampler = Sampler(interval_s).start()
  window = profile or ProfileWindow(workdir, 1, 0)
  window.hlo_texts.append(step_fn.as_text())
  for i in tqdm(range(steps), desc="measure", unit="step"):
    start = time.perf_counter()
    local = next(inputs.train)
    with window.step(i + 1):
      state, _ = step_fn(state, to_global(local, training.rows_sharding), *training.step_extras)
      jax.block_until_ready(state)
    tokens = int(local["weights"].sum()) * jax.process_count()
    iterations.append(study.Iteration(
        time.perf_counter() - start, tokens=tokens, samples=config.batch_size
    ))
  samples = sampler.stop()

  params = training.param_count()
  dtype = config.model.dtype
  meter = Mfu(peak_flops_total(dtype), lambda: peak_flops_total(dtype, refresh=True))
  seconds = sum(i.seconds for i in iterations)
  model_flops = flops_per_token(config.model, config.seq_len) * config.batch_size * config.seq_len
  achieved = meter(model_flops * steps, seconds)
  pcu = study.pcu(samples)
  pcu_metric = (
      study.metric(pcu, "fraction", f"time-average of {sampler.sources['utilization']}")
      if pcu is not None
      else study.metric(achieved, "fraction",
                        meter.note or f"MFU over the measured steps (no NVML here); peak: "
                        f"{meter.peak.source}" + (f", key {meter.peak.key}" if meter.peak.key
                                                  else ""))
  )
  return {
      "mode": "train",
      "steps": steps,
      "checkpoint": "restored" if restored else "freshly initialized",
      "param_count": params,
      "devices": jax.device_count(),
      "device_kind": jax.devices()[0].device_kind,
      "step_flops": flops,
      "step_temp_bytes": step_temp_bytes(step_fn),
      "metrics": {
          "AMU": study.amu_metric(samples, sampler.sources["memory"], interval_s),
          "PCU": pcu_metric,
          "AL": study.metric(study.al(iterations), "s",
                             "mean wall time per training step, run to completion"),
          "TT": study.metric(study.tt(iterations, params), "tokens/param/s",
                             "sum(real tokens / params) / sum(step seconds)"),
          "ST": study.metric(study.st(iterations, params), "samples/param/s",
                             f"sum(rows / params) / sum(step seconds); a sample is one "
                             f"{config.seq_len}-token row, params are the whole model's"),
          "AEC": study.metric(study.aec(samples), "W",
                              f"time-average of {sampler.sources['power']}"),
          "MCR": study.mcr_metric(files.read_json(workdir / files.QUANT_REPORT)),
      },
  }
