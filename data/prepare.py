"""Prepares a config's data once and writes DIR/data_report.json.

  python -m data.prepare --workdir=DIR [--config=configs/default.py[:ARG]] [--config.FIELD=V ...]

It builds the corpus (if needed), trains the tokenizer (if needed), drops bad documents, runs
the `data.filters` chain and scores the curriculum, with progress bars; train.py then finds the
result in the cache and trains on exactly that data. The report holds:
- bad_documents: empty, invalid UTF-8 and too-long documents dropped, per split;
- filters: each filter's kept and dropped documents and tokens, in chain order;
- splits: documents, tokens and bytes per split (train before and after filters);
- bytes_per_token: the tokenizer's UTF-8 bytes per token on the kept train documents;
- packing: rows, padding and efficiency of packing one epoch into seq_len rows;
- curriculum: the difficulty score's distribution (or null).
"""

import sys
from pathlib import Path

import jax
from absl import flags, logging
from ml_collections import config_flags

from efficiency import cli
from efficiency.config import resolve
from efficiency.train.inputs import prepared_of, tokenizer_of
from efficiency.workdir import files

if __name__ == "__main__" and (_error := cli.config_flag_error(sys.argv)):
  sys.exit(_error)  # config_flags would fail on it with a traceback while defining the flag

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/default.py", "Training config file, optionally with :ARG.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for data_report.json.")
flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  config = resolve(_CONFIG.value, jax.device_count(), jax.process_count())
  report = prepared_of(config, tokenizer_of(config), progress=True).report
  workdir = Path(_WORKDIR.value)
  workdir.mkdir(parents=True, exist_ok=True)
  path = workdir / files.DATA_REPORT
  files.write_json_atomic(path, report)
  train = report["splits"]["train"]
  print(
      f"prepared: {train['documents']:,} train documents, {train['tokens']:,} tokens, "
      f"{report['bytes_per_token']:.2f} bytes/token, packing efficiency "
      f"{report['packing']['efficiency']:.4f}; report in {path}"
  )


if __name__ == "__main__":
  cli.run(main)
