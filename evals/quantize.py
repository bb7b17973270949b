"""Converts a trained checkpoint to int8 (AQT CONVERT/SERVE) or packed int4 weights and reports.

  python -m evals.quantize --workdir=DIR --bits=8|4 [--dtype=bfloat16] [--group_size=0]
                          [--embedding=none|int8|int4] [--int4_activations=float|int8]

Writes DIR/quant_report.json: weight bytes (against the same model's weights in bf16, the
study's baseline), eval loss and next-token accuracy before (the model as trained, including its
quant.mode, with bf16 weights) and after, MCR (size ratio x accuracy ratio) and greedy decode
latency and tokens/s before and after, measured side by side in this process. --embedding stores
the token embedding table (and with it the tied logits) as int8 or packed int4 codes with
per-row scales (int4: per --group_size entries of a row when > 0); the report's
`embedding_variants` gives bytes, MCR and quality with the table float and quantized either way.
--int4_activations=int8 serves int4 kernels on int8 activations (W4A8: int32 products of int8
activations and the int4 codes, as int8 serving runs; an int4 table with per-row scales too):
the eval loss and decode speed are then those of that model.
The converted model itself is rebuilt by
`efficiency.serving.export.load_quantized(DIR, bits, dtype, group_size, embedding,
int4_activations)`; nothing else
in DIR changes.
"""

import json
import sys
from pathlib import Path

import jax.numpy as jnp
from absl import flags

from efficiency import cli
from efficiency.serving import export
from efficiency.serving.bench import quant_report
from efficiency.train.inputs import load_inputs
from efficiency.workdir import files
from efficiency.workdir.restore import restore

_WORKDIR = flags.DEFINE_string("workdir", None, "A train.py workdir with a checkpoint.")
_BITS = flags.DEFINE_integer("bits", 8, "Weight bits; 8 or 4.")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "Float parts: bfloat16, float16 or float32.")
_GROUP = flags.DEFINE_integer("group_size", 0, "int4: rows per scale (0: per channel).")
_EMBEDDING = flags.DEFINE_string(
    "embedding", "none", "Embedding table storage: none (float), int8 or int4.")
_INT4_ACTIVATIONS = flags.DEFINE_string(
    "int4_activations", "float", "bits=4: float (weight-only) or int8 (W4A8).")
_NEW_TOKENS = flags.DEFINE_integer("decode_tokens", 32, "Greedy tokens generated per timing.")
_PROMPT = flags.DEFINE_integer("prompt_len", 32, "Prompt tokens (taken from eval data).")
_BATCH = flags.DEFINE_integer("decode_batch", 1, "Sequences decoded at once.")


def main(argv: list[str]) -> None:
  del argv
  if _WORKDIR.value is None:
    sys.exit("error: --workdir is required")
  workdir = Path(_WORKDIR.value)
  export.check_conversion(_BITS.value, _DTYPE.value, _GROUP.value, _EMBEDDING.value,
                          _INT4_ACTIVATIONS.value)
  trained = restore(workdir)
  batches = load_inputs(trained.config, train=False).eval_batches
  prompt_BP = jnp.asarray(batches[0]["inputs"][: _BATCH.value, : _PROMPT.value])
  report = quant_report(trained, _BITS.value, _DTYPE.value, _GROUP.value, batches, prompt_BP,
                        _NEW_TOKENS.value, _EMBEDDING.value, _INT4_ACTIVATIONS.value)
  files.write_json_atomic(workdir / files.QUANT_REPORT, report)
  keys = ("bits", "int4_activations", "embedding", "weight_bytes", "eval_loss", "mcr",
          "embedding_variants")
  print(json.dumps({k: report[k] for k in keys}, indent=1))


if __name__ == "__main__":
  cli.run(main)
