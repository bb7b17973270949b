"""Data ablation sweep at the CPU default size: `python -m evals.sweep
--sweep=configs/sweeps/data_ablation.py --workdir=ROOT`.

The setups of BENCHMARKS.md's data section (baseline, filters, curriculum, both, sequence-length
warmup), each with seeds 0 and 1, on the same model, steps and target. Format: evals/sweep.py.
"""

FILTERS = {"data.filters": "length,exact_dedup,near_dup,quality"}
CURRICULUM = {"data.curriculum.difficulty": "compression"}
WARMUP = {"data.seq_len_warmup.start": 16, "data.seq_len_warmup.steps": 60}
SETUPS = [{}, FILTERS, CURRICULUM, {**FILTERS, **CURRICULUM}, WARMUP]


def get_sweep() -> dict:
  return dict(
      base="configs/default.py",
      points=[{**setup, "seed": seed} for setup in SETUPS for seed in (0, 1)],
      overrides={"steps": 240, "eval_every": 20, "checkpoint_every": 240, "target_loss": 5.0},
  )
