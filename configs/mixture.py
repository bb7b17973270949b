"""A weighted mixture of two sources every machine has: the standard library's code (`stdlib`)
and its test suite (`stdlib_tests`), drawn 3:1 by documents.

  python train.py --config=configs/mixture.py --workdir=DIR [--config.data.mixture.code.weight=W]

Each entry of `data.mixture` is a source label mapped to its `weight` and the `data.*` settings of
that source (`name`, `files`, `text_glob`, `filters`, `filter.*`, ...). One tokenizer is trained
on the mixture as a whole; summary.json and metrics.jsonl report `tokens_per_source`,
`eval_loss_per_source` and `eval_bpb_per_source`. The weights may change when a run resumes.
"""

import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the mixture config (the default run's model and length)."""
  del arg
  c = default.get_config()
  c.data.mixture = ml_collections.ConfigDict({
      "code": {"weight": 0.75, "name": "stdlib"},
      "tests": {"weight": 0.25, "name": "stdlib_tests"},
  })
  return c
