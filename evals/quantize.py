"""Converts a trained checkpoint to int8 (AQT CONVERT/SERVE) or packed int4 weights and reports.

  python -m evals.quantize --workdir=DIR --bits=8|4 [--dtype=bfloat16] [--group_size=0]

Writes DIR/quant_report.json: weight bytes (against the same model's weights in bf16, the
study's baseline), eval loss and next-token accuracy before (the model as trained, including its
quant.mode, with bf16 weights) and after, MCR
(size ratio x accuracy ratio) and greedy decode latency and tokens/s before and after, measured
side by side in this process. The converted model itself is rebuilt by
`efficiency.quant.export.load_quantized(DIR, bits, dtype)`; nothing else in DIR changes.
"""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from tqdm import tqdm

from data.pipeline import make_eval_batches
from data.tokenizer import get_tokenizer
from efficiency.config import ConfigError
from efficiency.metrics.writer import write_json_atomic
from efficiency.quant import export
from efficiency.quant.decode_speed import decode_speed
from efficiency.train.restore import TrainedModel, load_trained

_WORKDIR = flags.DEFINE_string("workdir", None, "A train.py workdir with a checkpoint.")
_BITS = flags.DEFINE_integer("bits", 8, f"Weight bits; one of {list(export.BITS)}.")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", f"Float parts; one of {list(export.DTYPES)}.")
_GROUP = flags.DEFINE_integer("group_size", 0, "int4: rows per scale (0: per channel).")
_NEW_TOKENS = flags.DEFINE_integer("decode_tokens", 32, "Greedy tokens generated per timing.")
_PROMPT = flags.DEFINE_integer("prompt_len", 32, "Prompt tokens (taken from eval data).")
_BATCH = flags.DEFINE_integer("decode_batch", 1, "Sequences decoded at once.")


def evaluate(trained: TrainedModel, batches: list[dict]) -> dict:
  """Mean eval loss (nats/token) and next-token top-1 accuracy over `batches`."""
  model = trained.model

  @jax.jit
  def sums(params, batch):
    logits = model.apply({"params": params}, batch["inputs"], batch["segment_ids"],
                         batch["positions"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    hit = (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32)
    w = batch["weights"]
    return jnp.sum(loss * w), jnp.sum(hit * w), jnp.sum(w)

  totals = np.zeros(3)
  for batch in tqdm(batches, desc="eval", unit="batch", leave=False):
    totals += np.asarray([float(x) for x in sums(trained.params, batch)])
  return {"eval_loss": totals[0] / totals[2], "accuracy": totals[1] / totals[2]}


def measure(
    trained: TrainedModel, bits: int, dtype: str, group_size: int, batches: list[dict],
    prompt_BP: jnp.ndarray, new_tokens: int,
) -> dict:
  """The quant_report.json fields for `trained` converted to `bits`."""
  before = export.cast_float(trained, "bfloat16")
  after = export.convert(trained, bits, dtype, group_size)
  quality_before, quality_after = evaluate(before, batches), evaluate(after, batches)
  speed = {}
  for name, m in (("before", before), ("after", after)):
    speed[name] = decode_speed(m.model, m.params, prompt_BP, new_tokens)
  bytes_before = export.weight_bytes(before.params)
  bytes_after = export.weight_bytes(after.params)
  size_ratio = bytes_before / bytes_after
  perf_ratio = quality_after["accuracy"] / quality_before["accuracy"]
  same = float(np.mean(np.asarray(speed["before"].pop("tokens")) ==
                       np.asarray(speed["after"].pop("tokens"))))
  return {
      "bits": bits, "dtype": dtype, "group_size": group_size,
      "step": trained.step,
      "scheme": "int8: AQT CONVERT/SERVE (int8 weights, per-channel scales; activations int8 "
                "on the fly)" if bits == 8 else
                "int4: weight-only, symmetric, packed two per byte, "
                + (f"scales per {group_size} rows" if group_size else "per-channel scales"),
      "weight_bytes": {"before": bytes_before, "after": bytes_after,
                       "baseline": "the same parameters stored in bfloat16"},
      "eval_loss": {"before": quality_before["eval_loss"], "after": quality_after["eval_loss"],
                    "change": quality_after["eval_loss"] - quality_before["eval_loss"],
                    "trained_float32": evaluate(trained, batches)["eval_loss"]},
      "accuracy": {"before": quality_before["accuracy"], "after": quality_after["accuracy"]},
      "mcr": size_ratio * perf_ratio,
      "mcr_definition": "(bf16 bytes / quantized bytes) x (accuracy after / accuracy before); "
                        "accuracy = next-token top-1 accuracy on the eval batches",
      "decode": {**speed, "same_greedy_tokens_fraction": same},
  }


def main(argv: list[str]) -> None:
  del argv
  if _WORKDIR.value is None:
    sys.exit("error: --workdir is required")
  workdir = Path(_WORKDIR.value)
  try:
    if _BITS.value not in export.BITS:
      raise ConfigError(f"bits={_BITS.value} is invalid; valid choices: {list(export.BITS)}")
    if _DTYPE.value not in export.DTYPES:
      raise ConfigError(f"dtype={_DTYPE.value!r} is invalid; valid choices: "
                        f"{list(export.DTYPES)}")
    trained = load_trained(workdir)
    config = trained.config
    batches = make_eval_batches(config, get_tokenizer(config), process_index=0, process_count=1)
    prompt_BP = jnp.asarray(batches[0]["inputs"][: _BATCH.value, : _PROMPT.value])
    report = measure(trained, _BITS.value, _DTYPE.value, _GROUP.value, batches, prompt_BP,
                     _NEW_TOKENS.value)
  except (ConfigError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  write_json_atomic(workdir / "quant_report.json", report)
  print(json.dumps({k: report[k] for k in ("bits", "weight_bytes", "eval_loss", "mcr")},
                   indent=1))


if __name__ == "__main__":
  app.run(main)
