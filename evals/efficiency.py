"""Measures the efficiency study's metrics for a run and writes them to DIR/efficiency.json.

  python -m evals.efficiency --workdir=DIR [--mode=train|infer] [--steps=20] [--interval=0.1]
      [--quant=none|8|4|4a8] [--batch=1 --prompt_len=64 --new_tokens=64]
      [--profile_start_step=N --profile_steps=K]

Train mode rebuilds DIR's model from DIR/config.json with DIR's newest parameters (or a fresh
initialization) and times `--steps` training steps on DIR's data, each one run to completion.
Infer mode restores DIR's newest checkpoint (converted to int8 or int4 with --quant) and times
`--steps` requests, each a greedy KV-cache generation of --new_tokens tokens for --batch prompts
of --prompt_len tokens from DIR's validation split. Either way a background sampler reads memory,
utilization and power meanwhile. efficiency.json holds one section per mode ({"train": ...,
"infer": ...}); a run updates only its own, and nothing else in DIR changes. Each metric is written
with its unit and how it was measured; a metric that cannot be measured here is null, with the
reason.

With --profile_steps, measured iterations N..N+K-1 (train steps or requests, from 1) are traced
into DIR/tensorboard/plugins/profile/ and the section gains a `profile` entry: XLA op time by
group, as train.py's profile_summary.json (efficiency.metrics.profile).
"""

import sys
from pathlib import Path

import jax
from absl import flags

from efficiency import cli
from efficiency.config import resolve
from efficiency.metrics.profile import ProfileWindow, classify_hlo, summarize, table
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
_PROFILE_START = flags.DEFINE_integer(
    "profile_start_step", 1, "First measured iteration (from 1) of the profile window.")
_PROFILE_STEPS = flags.DEFINE_integer("profile_steps", 0, "Iterations traced; 0: no trace.")


def _profile_window(workdir: Path, steps: int) -> ProfileWindow:
  """The --profile_* window over the measured iterations; exits with one line if it does not
  fit in them."""
  start, count = _PROFILE_START.value, _PROFILE_STEPS.value
  if count < 0 or start < 1:
    sys.exit(f"error: --profile_start_step={start} and --profile_steps={count} are invalid; the "
             "start counts from 1 and the steps from 0 (no trace)")
  if count and start + count - 1 > steps:
    sys.exit(f"error: --profile_start_step={start} with --profile_steps={count} ends past "
             f"--steps={steps}; start at most at {max(steps - count + 1, 1)}")
  return ProfileWindow(workdir / files.TENSORBOARD, start, count, name=_MODE.value)


def main(argv: list[str]) -> None:
  del argv
  if not _WORKDIR.value:
    sys.exit("error: --workdir is required")
  if _MODE.value not in MODES:
    sys.exit(f"error: --mode={_MODE.value!r} is invalid; valid choices: {list(MODES)}")
  workdir = Path(_WORKDIR.value)
  window = _profile_window(workdir, _STEPS.value)
  if _MODE.value == "train":
    config = resolve(files.load_config(workdir), jax.device_count(), jax.process_count())
    report = measure_train(workdir, config, _STEPS.value, _INTERVAL.value, window)
  else:
    quant_bits, int4_activations = quant_setting(_QUANT.value)
    report = measure_infer(workdir, _STEPS.value, _INTERVAL.value, quant_bits, _BATCH.value,
                           _PROMPT_LEN.value, _NEW_TOKENS.value, _QUANT_EMBEDDING.value,
                           int4_activations, window)
  if window.trace_path is not None:
    report["profile"] = summarize(window.trace_path, classify_hlo(window.hlo_texts), window.name)
    print(table(report["profile"]))
  path = workdir / files.EFFICIENCY
  files.write_json_atomic(path, {**files.read_json(path), _MODE.value: report})
  for name, m in report["metrics"].items():
    print(f"{name:4s} {m['value']!s:>24} {m['unit']:15s} {m['how']}")


if __name__ == "__main__":
  cli.run(main)
