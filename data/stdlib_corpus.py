"""TFDS builder over the Python standard library's `*.py` files: a small, real code corpus.

One example per file: `text` (the file's contents) and `path` (relative to the root). Files go to
train or validation by a stable hash of their path, so the split never depends on file order.
"""

import collections
import dataclasses
import hashlib
import os
import sys
import sysconfig
from collections.abc import Iterator

import tensorflow_datasets as tfds
from absl import logging

from data.file_corpus import FileCorpus

# Directory names never descended into: installed packages and test suites (including
# idlelib/idle_test and lib2to3/tests, whose data files are deliberately malformed).
EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test"})


def default_root() -> str:
  """This interpreter's standard-library directory."""
  return sysconfig.get_paths()["stdlib"]


def python_files(root: str) -> list[str]:
  """Sorted `/`-separated paths, relative to `root`, of the corpus's `*.py` files."""
  paths = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if d not in EXCLUDED_DIRS]
    rel_dir = os.path.relpath(dirpath, root)
    for name in filenames:
      if name.endswith(".py"):
        paths.append(os.path.normpath(os.path.join(rel_dir, name)).replace(os.sep, "/"))
  return sorted(paths)


@dataclasses.dataclass
class StdlibCorpusConfig(tfds.core.BuilderConfig):
  """Which directory to read and how much of it to hold out."""

  root: str = ""
  validation_percent: int = 5


def make_config(root: str, validation_percent: int) -> StdlibCorpusConfig:
  """A config named so that different roots and splits never share a prepared directory.

  The default root is named after the interpreter version (`python3.11.7-val5`); any other root
  after a short hash of its absolute path (`root-1a2b3c4d5e-val5`).
  """
  root = os.path.abspath(root)
  if root == os.path.abspath(default_root()):
    v = sys.version_info
    prefix = f"python{v.major}.{v.minor}.{v.micro}"
  else:
    prefix = "root-" + hashlib.sha1(root.encode("utf-8")).hexdigest()[:10]
  return StdlibCorpusConfig(
      name=f"{prefix}-val{validation_percent}",
      description=f"*.py files under {root}, {validation_percent}% held out for validation.",
      root=root,
      validation_percent=validation_percent,
  )


class StdlibCorpus(FileCorpus):
  """Python source files of the standard library (or of any directory), one example per file."""

  DESCRIPTION = __doc__

  def files(self) -> list[str]:
    return python_files(self.builder_config.root)

  def describe(self) -> str:
    return repr(self.builder_config.root)

  def _generate_examples(self, split: str, paths: list[str]) -> Iterator[tuple[str, dict]]:
    """Files decoded as UTF-8; empty and non-UTF-8 files are skipped (and counted in the log)."""
    skipped = collections.Counter()
    for path in paths:
      with open(os.path.join(self.builder_config.root, path), "rb") as f:
        data = f.read()
      try:
        text = data.decode("utf-8")
      except UnicodeDecodeError:
        skipped["not UTF-8"] += 1
        continue
      if not text.strip():
        skipped["empty"] += 1
        continue
      yield path, {"text": text, "path": path}
    logging.info(
        "stdlib_corpus %s: kept %d of %d files; skipped %d empty, %d not UTF-8",
        split,
        len(paths) - sum(skipped.values()),
        len(paths),
        skipped["empty"],
        skipped["not UTF-8"],
    )
