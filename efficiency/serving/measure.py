"""The efficiency study's inference metrics of a run (evals.efficiency --mode=infer): greedy
KV-cache generation requests of its newest checkpoint (optionally converted to int8 or int4),
each one jitted on-device program (`efficiency.serving.generate`), timed while a background
sampler reads memory, utilization and power."""

import time
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from efficiency.errors import ConfigError
from efficiency.metrics import study
from efficiency.metrics.profile import ProfileWindow
from efficiency.metrics.sampler import Sampler
from efficiency.serving import export
from efficiency.serving.generate import generate, kv_cache_bytes
from efficiency.serving.loading import check_embedding
from efficiency.serving.quant_report import compression
from efficiency.serving.sampling import Sampling
from efficiency.train.inputs import load_inputs
from efficiency.workdir import files
from efficiency.workdir.restore import restore


def measure_infer(
    workdir: str | Path, requests: int, interval_s: float, quant_bits: int | None, batch: int,
    prompt_len: int, new_tokens: int, quant_embedding: str = "none",
    int4_activations: str = "float", profile: ProfileWindow | None = None,
) -> dict:
  """The `infer` section of efficiency.json: `requests` greedy generations of `new_tokens`
  tokens for `batch` prompts of `prompt_len` tokens from the run's validation split (AMU, PCU,
  AL, IT, AEC, MCR) and the bytes of the KV cache a request allocates (windowed entries as
  rings). With `quant_bits`, MCR is measured against the model in bf16 on the eval batches;
  otherwise it comes from the workdir's quant_report.json, if any. `quant_embedding` stores the
  converted model's embedding table as int8 or int4 (efficiency.quant.table);
  `int4_activations=int8` serves int4 weights on int8 activations; `profile` traces its window
  of the measured requests (numbered from 1)."""
  if min(batch, prompt_len, new_tokens) < 1:
    raise ConfigError(
        f"batch={batch}, prompt_len={prompt_len} and new_tokens={new_tokens} must all be >= 1"
    )
  check_embedding(quant_bits, quant_embedding)
  workdir = Path(workdir)
  trained = restore(workdir)
  served = (export.convert(trained, quant_bits, embedding=quant_embedding,
                           int4_activations=int4_activations) if quant_bits else trained)
  eval_batches = load_inputs(trained.config, train=False).eval_batches
  rows = np.concatenate([b["inputs"] for b in eval_batches])
  if rows.shape[1] < prompt_len:
    raise ConfigError(f"prompt_len={prompt_len} exceeds the run's seq_len={rows.shape[1]}")
  greedy = Sampling(temperature=0.0)

  def request(i: int) -> list[np.ndarray]:
    chosen = [rows[(i * batch + j) % len(rows), :prompt_len] for j in range(batch)]
    return generate(served.model, served.params, chosen, new_tokens, greedy, eos_id=None)

  request(0)  # compiles prefill and decode shapes
  iterations = []
  sampler = Sampler(interval_s).start()
  for i in tqdm(range(requests), desc="measure", unit="request"):
    start = time.perf_counter()
    with (profile or ProfileWindow(workdir, 1, 0)).step(i + 1):
      generated = sum(len(out) for out in request(i + 1))
    iterations.append(study.Iteration(time.perf_counter() - start, tokens=generated))
  samples = sampler.stop()

  seconds = sum(i.seconds for i in iterations)
  tokens = sum(i.tokens for i in iterations)
  pcu = study.pcu(samples)
  if quant_bits:
    measured = compression(export.cast_float(trained, "bfloat16"), served, eval_batches)
    mcr = study.metric(measured["mcr"], "ratio",
                       f"int{quant_bits} against bf16 weights on the eval batches (bytes ratio x "
                       "next-token accuracy ratio)")
  else:
    mcr = study.mcr_metric(files.read_json(workdir / files.QUANT_REPORT))
  return {
      "mode": "infer",
      "requests": requests,
      "model": f"int{quant_bits} weights"
      f"{' on int8 activations' if int4_activations == 'int8' else ''}, "
      f"{quant_embedding} embedding table "
      "(efficiency.serving.export)" if quant_bits else "as trained",
      "batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens,
      "kv_cache_bytes": kv_cache_bytes(served.model, batch, prompt_len, new_tokens),
      "param_count": int(sum(x.size for x in jax.tree.leaves(served.params))),
      "devices": jax.device_count(),
      "device_kind": jax.devices()[0].device_kind,
      "metrics": {
          "AMU": study.amu_metric(samples, sampler.sources["memory"], interval_s),
          "PCU": study.metric(pcu, "fraction",
                              f"time-average of {sampler.sources['utilization']}"
                              if pcu is not None else "null: no NVML utilization on this device"),
          "AL": study.metric(study.al(iterations), "s",
                             f"mean wall time per request: prefill of {batch} x {prompt_len} "
                             f"tokens and {new_tokens} greedy KV-cache decode steps, one "
                             "jitted on-device loop per request (compiled before timing)"),
          "IT": study.metric(study.it(tokens, seconds), "tokens/s",
                             "generated tokens / wall seconds over all requests"),
          "AEC": study.metric(study.aec(samples), "W",
                              f"time-average of {sampler.sources['power']}"),
          "MCR": mcr,
      },
  }
