"""Merges a PEFT run's adapters into a plain checkpoint that loads and decodes without PEFT code.

  python -m evals.merge_adapters --workdir=DIR --out=DIR2

DIR2 gets config.json (DIR's config without `peft` and `init_from`; the tokenizer still comes
from the pretrained run, through `data.tokenizer_from`) and one checkpoint at DIR's step whose
params are DIR's effective parameters (base + adapters, exactly what the adapter model applies)
and whose optimizer state is fresh. Fine-tune it further with `--config.init_from=DIR2`.
"""

import sys

from absl import flags

from efficiency import cli
from efficiency.peft.merge import merge

_WORKDIR = flags.DEFINE_string("workdir", None, "A fine-tuning (train.py) workdir.")
_OUT = flags.DEFINE_string("out", None, "New workdir for the merged checkpoint.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to merge; default: the newest.")


def main(argv: list[str]) -> None:
  del argv
  if not _WORKDIR.value or not _OUT.value:
    sys.exit("error: --workdir and --out are required")
  out = merge(_WORKDIR.value, _OUT.value, _STEP.value)
  print(f"merged {_WORKDIR.value} into {out}")


if __name__ == "__main__":
  cli.run(main)
