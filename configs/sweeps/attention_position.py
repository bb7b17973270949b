"""Attention x position sweep at the CPU default size: `python -m evals.sweep
--sweep=configs/sweeps/attention_position.py --workdir=ROOT`.

Format (see evals/sweep.py): `get_sweep()` returns a dict with
  base:      the config file every point starts from, as train.py's --config takes it;
  grid:      {dotted config field: [values]}, expanded as a Cartesian product;
  overrides: {dotted config field: value} applied to every point.

Here: the 6 attention variants x 6 position encodings (36 points) on the default model and
corpus, shortened to 300 steps so the whole sweep fits a few CPU-hours. Each point profiles
steps 100-104, so the results table's `top_op_group` / `top_op_group_share` and each workdir's
profile_summary.json show where each variant's step time goes.
"""


def get_sweep() -> dict:
  return dict(
      base="configs/default.py",
      grid={
          "model.attention": ["mha", "mqa", "gqa", "mla", "nsa", "sliding"],
          "model.position": ["rope", "sinusoidal", "learned", "relative", "alibi", "none"],
      },
      overrides={
          "steps": 300, "eval_every": 25, "target_loss": 5.0,
          "profile.start_step": 100, "profile.steps": 5,
      },
  )
