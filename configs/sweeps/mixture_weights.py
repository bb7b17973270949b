"""Mixture weights of the standard library's code and its test suite (configs/mixture.py):
`python -m evals.sweep --sweep=configs/sweeps/mixture_weights.py --workdir=ROOT`.

Each point gives the code a share w of the rows and the tests 1 - w, at the default model, cut
to 150 steps so the sweep fits a CPU; results.md has each source's eval loss and tokens
(`eval_loss_per_source.code`, ...) beside the pooled eval loss and tokens to target. The two
sources are prepared and the tokenizer trained once, for every point.
"""

CODE_WEIGHTS = (0.25, 0.5, 0.75, 1.0)


def get_sweep() -> dict:
  return dict(
      base="configs/mixture.py",
      points=[
          {"data.mixture.code.weight": w, "data.mixture.tests.weight": round(1 - w, 2)}
          for w in CODE_WEIGHTS
      ],
      overrides={"steps": 150, "eval_every": 25, "target_loss": 5.5, "checkpoint_every": 150},
  )
