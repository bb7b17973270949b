"""Quantized training sweep at the CPU default size: `python -m evals.sweep
--sweep=configs/sweeps/quantization.py --workdir=ROOT`.

Every `quant.mode` (AQT in every projection; attention products and logits in float) on the
default model, steps and target, so eval-loss curves and tokens_to_target compare at equal
tokens. Format: evals/sweep.py.
"""

MODES = ("none", "int8", "int8_fwd", "int4", "fp8")


def get_sweep() -> dict:
  return dict(
      base="configs/default.py",
      points=[{"quant.mode": mode} for mode in MODES],
  )
