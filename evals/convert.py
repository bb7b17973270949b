"""Hugging Face checkpoints in and out (Qwen2 and Llama; safetensors, no torch).

  python -m evals.convert --from_hf=HF_DIR --workdir=OUT [--param_dtype=float32]
      [--scan_layers=true] [--fsdp=1] [--tensor=1]
  python -m evals.convert --workdir=DIR --to_hf=OUT [--step=N] [--dtype=bfloat16]
      [--max_shard_gb=5]

Import reads HF_DIR's config.json, safetensors shards and tokenizer files and writes a workdir
that every tool accepts (`--config.init_from=OUT` for fine-tuning, `evals.generate`, `evals.cos`,
`evals.quantize`, `evals.efficiency`): config.json (configs/default.py with the checkpoint's
model and `data.tokenizer='hf'`), OUT/tokenizer/ and a step-0 checkpoint of the weights alone.
Import also takes a folder with a sentencepiece tokenizer.model instead of tokenizer.json.
Export writes a folder `transformers` loads as Qwen2 (models with QKV biases) or Llama
(without), with the run's tokenizer as tokenizer.json (`sentencepiece` and `bytes` converted to
the same ids; the report's "tokenizer" says which). docs/hf.md walks the whole round trip.
"""

import json
import sys

import jax
from absl import flags

from configs import default
from efficiency import cli
from efficiency.config import resolve
from efficiency.hf.convert import export_checkpoint, import_checkpoint, imported_config

_FROM_HF = flags.DEFINE_string("from_hf", None, "A Hugging Face model folder to import.")
_TO_HF = flags.DEFINE_string("to_hf", None, "A new folder to export the workdir's model into.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The workdir to write (import) or read (export).")
_PARAM_DTYPE = flags.DEFINE_enum(
    "param_dtype", "float32", ["float32", "bfloat16"], "Import: the parameters' dtype."
)
_SCAN = flags.DEFINE_boolean("scan_layers", True, "Import: stack the layers for nn.scan.")
_FSDP = flags.DEFINE_integer("fsdp", 1, "Import: mesh fsdp axis the parameters are placed on.")
_TENSOR = flags.DEFINE_integer("tensor", 1, "Import: mesh tensor axis.")
_STEP = flags.DEFINE_integer("step", None, "Export: the checkpoint step; default the newest.")
_DTYPE = flags.DEFINE_enum(
    "dtype", None, ["float32", "bfloat16"], "Export: tensor dtype; default the model's."
)
_SHARD_GB = flags.DEFINE_float("max_shard_gb", 5.0, "Export: the largest shard, in GB.")


def main(argv: list[str]) -> None:
  del argv
  if not _WORKDIR.value or bool(_FROM_HF.value) == bool(_TO_HF.value):
    sys.exit("error: give --workdir and exactly one of --from_hf (import) or --to_hf (export)")
  if _FROM_HF.value:
    config = imported_config(default.get_config(), _FROM_HF.value, _SCAN.value, _PARAM_DTYPE.value)
    config.mesh.update(data=-1, fsdp=_FSDP.value, tensor=_TENSOR.value)
    config = resolve(config, jax.device_count(), jax.process_count())
    print(json.dumps(import_checkpoint(_FROM_HF.value, _WORKDIR.value, config)))
    return
  if _SHARD_GB.value <= 0:
    sys.exit(f"error: --max_shard_gb={_SHARD_GB.value} must be positive")
  report = export_checkpoint(
      _WORKDIR.value, _TO_HF.value, _STEP.value, _DTYPE.value, int(_SHARD_GB.value * 1e9)
  )
  print(json.dumps(report))


if __name__ == "__main__":
  cli.run(main)
