"""What decoding costs, each measured through the one timing path (`request.timed`: a compiled
request's wall time, compilation excluded):

- `decode_speed`: greedy KV-cache decode latency and tokens/s of any (model, params) (a float
  model and its quantized conversion decode through the same path), for quant_report.json and
  the quantization benchmark.
- `quant_report`: what a quantized export costs and saves against the same model in bf16
  (the study's baseline): weight bytes, eval loss and next-token accuracy, MCR, and greedy
  decode speed, all measured side by side in one process (quant_report.json). Its top-level
  fields describe the export as requested (its table per `embedding`); `embedding_variants`
  reports the same kernels with the table float (`none`) and quantized, so the whole-model
  compression is on record either way.
- `measure_infer`: the efficiency study's inference metrics of a run (evals.efficiency
  --mode=infer): greedy generation requests of its newest checkpoint (optionally int8 or int4),
  timed while a background sampler reads memory, utilization and power.
- `compare`: standard collaborative decoding and CoS side by side on the same prompts (the CoS
  benchmark): tokens/s, speedup over standard, acceptance and tokens per model call, and with
  gamma="auto" the plan (`collaborate.plan`) and its predicted against achieved tokens/s.
"""

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from efficiency.errors import ConfigError
from efficiency.evaluation import Evaluator
from efficiency.metrics import study
from efficiency.metrics.profile import ProfileWindow
from efficiency.metrics.sampler import Sampler
from efficiency.quant import table
from efficiency.serving import export
from efficiency.serving.collaborate import METHODS, collaborate, plan, proposal_lengths
from efficiency.serving.generate import Generated, kv_cache_bytes, run
from efficiency.serving.loading import check_embedding
from efficiency.serving.request import AUTO
from efficiency.serving.sampling import Sampling
from efficiency.serving.weights import to_decode_form
from efficiency.train.inputs import load_inputs
from efficiency.train.step import Batch
from efficiency.workdir import files
from efficiency.workdir.restore import TrainedModel, restore

METHOD = (
    "greedy KV-cache decoding (efficiency.serving.generate): one jitted on-device program per "
    "request (prefill of the prompt, then a while loop of cached one-token steps), no EOS "
    "stop; compile excluded"
)


def decode_speed(
    model: nn.Module, params: dict, prompt_BP: jnp.ndarray, new_tokens: int, repeats: int = 3
) -> dict:
  """Best-of-`repeats` wall time of greedy generation after a compile run: per-token latency (s)
  and generated tokens per second over the batch, and the bytes of the KV cache it allocates
  (windowed entries as rings); also returns the tokens [B, new_tokens]."""
  prompts = list(np.asarray(prompt_BP, np.int32))
  greedy = Sampling(temperature=0.0)
  model, params = to_decode_form(model, params)  # once, outside the timed requests
  run_once = lambda: run(model, params, prompts, new_tokens, greedy, eos_id=None)
  out = run_once().tokens
  best = min(run_once().decode_s for _ in range(repeats))
  return {
      "latency_s_per_token": best / new_tokens,
      "tokens_per_s": len(prompts) * new_tokens / best,
      "batch": len(prompts), "prompt_len": prompt_BP.shape[1], "new_tokens": new_tokens,
      "kv_cache_bytes": kv_cache_bytes(model, len(prompts), prompt_BP.shape[1], new_tokens),
      "method": METHOD, "tokens": np.stack(out),
  }


MCR_DEFINITION = (
    "(bf16 bytes / quantized bytes) x (accuracy after / accuracy before); "
    "accuracy = next-token top-1 accuracy on the eval batches"
)


def quality(trained: TrainedModel, batches: list[Batch]) -> dict[str, float]:
  """Eval loss (nats per token) and next-token accuracy of a (served) model on `batches`."""
  result = Evaluator(trained.model)(trained.params, batches)
  return {"eval_loss": result["eval_loss"], "accuracy": result["accuracy"]}


def compression(before: TrainedModel, after: TrainedModel, batches: list[Batch]) -> dict:
  """Weight bytes, quality and MCR of `after` (a quantized model) against `before` (bf16)."""
  bytes_before, bytes_after = export.weight_bytes(before.params), export.weight_bytes(after.params)
  quality_before, quality_after = quality(before, batches), quality(after, batches)
  return {
      "weight_bytes": {"before": bytes_before, "after": bytes_after,
                       "baseline": "the same parameters stored in bfloat16"},
      "quality": {"before": quality_before, "after": quality_after},
      "mcr": study.mcr(bytes_before, bytes_after, quality_before["accuracy"],
                       quality_after["accuracy"]),
  }


def embedding_scheme(
    embedding: str, group_size: int, bits: int, d_model: int, int4_activations: str = "float"
) -> str:
  """How the served table [V, d_model] is stored (quant.embedding) and how its tied logits run
  under kernels of `bits` (int4 on `int4_activations`)."""
  if embedding == "none":
    return "float table in the served dtype"
  scales = f"scales per {group_size} entries of a row" if embedding == "int4" and group_size \
      else "per-row scales"
  logits = ("tied logits on int8 activations (per-token scales), int32 sums"
            if table.logits_on_int8_activations(
                embedding, table.scale_groups(table.BITS[embedding], d_model, group_size),
                bits == 8 or int4_activations == "int8")
            else "tied logits are weight-only")
  return (f"{embedding} codes ({'packed two per byte, ' if embedding == 'int4' else ''}"
          f"float32 {scales}); lookup dequantizes gathered rows, {logits}")


def table_bytes(params: dict) -> int:
  """Bytes of the token embedding table as stored (float, or codes and scales)."""
  return export.weight_bytes(params["embed"])


def _variant(measured: dict, after: TrainedModel, embedding: str, speed: dict) -> dict:
  q = measured["quality"]
  return {
      "embedding": embedding,
      "weight_bytes": measured["weight_bytes"]["after"],
      "table_bytes": table_bytes(after.params),
      "eval_loss": q["after"]["eval_loss"],
      "eval_loss_change": q["after"]["eval_loss"] - q["before"]["eval_loss"],
      "accuracy": q["after"]["accuracy"],
      "mcr": measured["mcr"],
      "decode_tokens_per_s": speed["tokens_per_s"],
  }


def quant_report(
    trained: TrainedModel, bits: int, dtype: str, group_size: int, batches: list[Batch],
    prompt_BP: jnp.ndarray, new_tokens: int, embedding: str = "none",
    int4_activations: str = "float",
) -> dict:
  """The quant_report.json fields for `trained` converted to `bits`, its table per
  `embedding`, int4 on `int4_activations`."""
  before = export.cast_float(trained, "bfloat16")
  after = export.convert(trained, bits, dtype, group_size, embedding, int4_activations)
  other_embedding = f"int{bits}" if embedding == "none" else "none"
  other = export.convert(trained, bits, dtype, group_size, other_embedding, int4_activations)
  measured = compression(before, after, batches)
  speed = {name: decode_speed(m.model, m.params, prompt_BP, new_tokens)
           for name, m in (("before", before), ("after", after), ("other", other))}
  same = float(np.mean(np.asarray(speed["before"].pop("tokens")) ==
                       np.asarray(speed["after"].pop("tokens"))))
  speed["other"].pop("tokens")
  variants = {
      embedding: _variant(measured, after, embedding, speed["after"]),
      other_embedding: _variant(compression(before, other, batches), other, other_embedding,
                                speed.pop("other")),
  }
  q = measured["quality"]
  return {
      "bits": bits, "dtype": dtype, "group_size": group_size, "embedding": embedding,
      "int4_activations": int4_activations if bits == 4 else "int8", "step": trained.step,
      "scheme": "int8: AQT CONVERT/SERVE (int8 weights, per-channel scales; activations int8 "
                "on the fly)" if bits == 8 else
                ("int4: weight-only" if int4_activations == "float" else
                 "int4 on int8 activations (W4A8: per-token activation scales, int32 sums)")
                + ", symmetric, packed two per byte, "
                + (f"scales per {group_size} rows" if group_size else "per-channel scales"),
      "embedding_scheme": embedding_scheme(embedding, group_size, bits,
                                           trained.config.model.d_model, int4_activations),
      "weight_bytes": {**measured["weight_bytes"], "table_before": table_bytes(before.params),
                       "table_after": table_bytes(after.params)},
      "eval_loss": {"before": q["before"]["eval_loss"], "after": q["after"]["eval_loss"],
                    "change": q["after"]["eval_loss"] - q["before"]["eval_loss"],
                    "trained_float32": quality(trained, batches)["eval_loss"]},
      "accuracy": {"before": q["before"]["accuracy"], "after": q["after"]["accuracy"]},
      "mcr": measured["mcr"],
      "mcr_definition": MCR_DEFINITION,
      "decode": {**speed, "same_greedy_tokens_fraction": same},
      "embedding_variants": {e: variants[e] for e in ("none", "int8", "int4") if e in variants},
  }


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
  decoded = to_decode_form(served.model, served.params)  # once, outside the timed requests

  def request(i: int) -> Generated:
    chosen = [rows[(i * batch + j) % len(rows), :prompt_len] for j in range(batch)]
    return run(*decoded, chosen, new_tokens, greedy, eos_id=None)

  request(0)  # compiles prefill and decode shapes
  iterations = []
  sampler = Sampler(interval_s).start()
  for i in tqdm(range(requests), desc="measure", unit="request"):
    with (profile or ProfileWindow(workdir, 1, 0)).step(i + 1):
      out = request(i + 1)
    iterations.append(study.Iteration(out.decode_s, tokens=sum(map(len, out.tokens))))
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


def _summarize(totals: dict, outputs: dict) -> dict:
  """Per-method rates, speedups over `standard` and greedy identity, from summed totals."""
  report = {}
  for name, t in totals.items():
    report[name] = {
        **t,
        "tokens_per_s": t["tokens"] / t["decode_s"],
        "acceptance": t["accepted"] / t["verified"] if t["verified"] else None,
        "tokens_per_call": t["tokens"] / max(t["calls"], 1),
    }
  base = report["standard"]["tokens_per_s"] if "standard" in report else None
  for name in report:
    report[name]["speedup"] = report[name]["tokens_per_s"] / base if base else None
  report["same_tokens_as_standard"] = {
      name: outputs[name] == outputs["standard"] for name in outputs if "standard" in outputs
  }
  return report


PLAN_PROMPTS = 4  # prompts of the acceptance probe of `compare` with gamma="auto"


def compare(
    collab, members: list, prompts: list[np.ndarray], max_new_tokens: int,
    gamma: int | tuple[int, ...] | str, proposer: int, seed: int, eos_id: int | None,
) -> dict:
  """Standard and CoS on device, each prompt its own request (batch 1, as the paper measures),
  compilation excluded: per-method totals, rates, speedups over `standard` and whether greedy
  tokens match standard's. With gamma="auto" the `cos` row runs what `collaborate.plan` chose
  at batch 1 from the first PLAN_PROMPTS prompts (standard decoding when CoS would not pay)."""
  totals = {name: {"tokens": 0, "decode_s": 0.0, "verified": 0, "accepted": 0, "calls": 0}
            for name in METHODS}
  outputs = {name: [] for name in METHODS}
  members = [to_decode_form(m, p) for m, p in members]  # once, outside the timed requests
  chosen = None
  if gamma == AUTO:
    chosen = plan(collab, members, prompts[:PLAN_PROMPTS], max_new_tokens, eos_id, proposer,
                  seed, batch=1)
  gammas = proposal_lengths((chosen.gamma or 1) if chosen else gamma, len(members))
  method = {"standard": "standard",
            "cos": "standard" if chosen and chosen.gamma is None else "cos"}
  for i, prompt in enumerate(tqdm(prompts, desc="prompts", leave=False)):
    for name in METHODS:
      out = collaborate(collab, members, [prompt], max_new_tokens, method[name], eos_id, gammas,
                        proposer, seed=seed, first_row=i)
      outputs[name].append(out.tokens[0].tolist())
      t = totals[name]
      t["tokens"] += len(out.tokens[0])
      t["decode_s"] += out.decode_s
      t["verified"] += out.verified
      t["accepted"] += out.accepted
      t["calls"] += out.calls
  report = _summarize(totals, outputs)
  report["plan"] = {**(chosen.as_dict() if chosen else {"plan": list(gammas)}),
                    "achieved_tokens_per_s": report["cos"]["tokens_per_s"]}
  return report


def compare_table(report: dict) -> str:
  """`compare`'s report as a text table, one row per method."""
  rows = [f"{'method':<10}{'tokens':>8}{'tokens/s':>10}{'speedup':>9}{'accept':>8}{'tok/call':>10}"]
  for name in METHODS:
    if name in report:
      r = report[name]
      acc = "-" if r["acceptance"] is None else f"{r['acceptance']:.2f}"
      rows.append(f"{name:<10}{r['tokens']:>8}{r['tokens_per_s']:>10.1f}{r['speedup']:>8.2f}x"
                  f"{acc:>8}{r['tokens_per_call']:>10.2f}")
  return "\n".join(rows)
