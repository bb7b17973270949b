"""What a quantized export costs and saves against the same model in bf16 (the study's
baseline): weight bytes, eval loss and next-token accuracy, MCR, and greedy decode speed, all
measured side by side in one process (quant_report.json).

The top-level fields describe the export as requested (its table per `embedding`; `none`, the
default, keeps the float table as before). `embedding_variants` reports the same kernels with
the table float (`none`) and quantized (the requested storage, or int{bits} when none was
asked for): bytes, table bytes, quality, MCR and decode tokens/s of each, so the whole-model
compression is on record either way.
"""

import jax.numpy as jnp
import numpy as np

from efficiency.evaluation import Evaluator
from efficiency.metrics import study
from efficiency.quant import table
from efficiency.serving import export
from efficiency.serving.timing import decode_speed
from efficiency.train.step import Batch
from efficiency.workdir.restore import TrainedModel

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
