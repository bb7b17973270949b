"""Measures the efficiency study's metrics for a run and writes them to DIR/efficiency.json.

  python -m evals.efficiency --workdir=DIR [--mode=train|infer] [--steps=20] [--interval=0.1]
      [--quant=none|8|4|4a8] [--batch=1 --prompt_len=64 --new_tokens=64]

Train mode rebuilds DIR's model from DIR/config.json with DIR's newest parameters (or a fresh
initialization) and times `--steps` training steps on DIR's data, each one run to completion.
Infer mode restores DIR's newest checkpoint (converted to int8 or int4 with --quant) and times
`--steps` requests, each a greedy KV-cache generation of --new_tokens tokens for --batch prompts
of --prompt_len tokens from DIR's validation split. Either way a background sampler reads memory,
utilization and power meanwhile. efficiency.json holds one section per mode ({"train": ...,
"infer": ...}); a run updates only its own, and nothing else in DIR changes. Each metric is written
with its unit and how it was measured; a metric that cannot be measured here is null, with the
reason.
"""

import sys
from pathlib import Path

import jax
from absl import flags

from efficiency import cli
from efficiency.config import resolve
from efficiency.serving.bench import measure_infer
from efficiency.serving.loading import QUANT_CHOICES, quant_setting
from efficiency.train.measure import measure_train
from efficiency.workdir import files

MODES = ("train", "infer")

_WORKDIR = flags.DEFINE_string("workdir", None, "A train.py workdir (needs config.json).")
_MODE = flags.DEFINE_string("mode", "train", f"What to measure; one of {MODES}.")
_STEPS = flags.DEFINE_integer(
    "steps", 20, "Measured iterations: train steps (after 2 warm-up steps) or infer requests."
)
_INTERVAL = flags.DEFINE_float("interval", 0.1, "Seconds between memory/power samples.")
_QUANT = flags.DEFINE_enum("quant", "none", list(QUANT_CHOICES),
                           "infer: weight bits of the model; 4a8: int4 on int8 activations.")
_QUANT_EMBEDDING = flags.DEFINE_string(
    "quant_embedding", "none", "infer, with --quant: the embedding table as none, int8, int4.")
_BATCH = flags.DEFINE_integer("batch", 1, "infer: prompts per request.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 64, "infer: prompt tokens (from eval data).")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 64, "infer: tokens generated per prompt.")


def main(argv: list[str]) -> None:
  del argv
  if not _WORKDIR.value:
    sys.exit("error: --workdir is required")
  if _MODE.value not in MODES:
    sys.exit(f"error: --mode={_MODE.value!r} is invalid; valid choices: {list(MODES)}")
  workdir = Path(_WORKDIR.value)
  if _MODE.value == "train":
    config = resolve(files.load_config(workdir), jax.device_count(), jax.process_count())
    report = measure_train(workdir, config, _STEPS.value, _INTERVAL.value)
  else:
    quant_bits, int4_activations = quant_setting(_QUANT.value)
    report = measure_infer(workdir, _STEPS.value, _INTERVAL.value, quant_bits, _BATCH.value,
                           _PROMPT_LEN.value, _NEW_TOKENS.value, _QUANT_EMBEDDING.value,
                           int4_activations)
  path = workdir / files.EFFICIENCY
  files.write_json_atomic(path, {**files.read_json(path), _MODE.value: report})
  for name, m in report["metrics"].items():
    print(f"{name:4s} {m['value']!s:>24} {m['unit']:15s} {m['how']}")


if __name__ == "__main__":
  cli.run(main)
