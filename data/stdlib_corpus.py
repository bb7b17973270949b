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

from efficiency.errors import ConfigError

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


def is_validation(path: str, validation_percent: int) -> bool:
  """Whether the file at relative `path` belongs to the validation split (sha1 of path mod 100)."""
  digest = hashlib.sha1(path.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") % 100 < validation_percent


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


class StdlibCorpus(tfds.core.GeneratorBasedBuilder):
  """Python source files of the standard library (or of any directory), one example per file."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> None:
    """None: there is no checksums file to find next to this code.

    (Locating the code of a builder defined in a package needs the `importlib_resources`
    backport, which tensorflow-datasets 4.9.10 uses but does not install; see
    tensorflow/datasets#11212.)
    """
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict(
            {"text": tfds.features.Text(), "path": tfds.features.Text()}
        ),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download.
    config = self.builder_config
    paths = python_files(config.root)
    splits = {"train": [], "validation": []}
    for path in paths:
      split = "validation" if is_validation(path, config.validation_percent) else "train"
      splits[split].append(path)
    for split, split_paths in splits.items():
      if not split_paths:
        raise ConfigError(
            f"the {split} split of {config.root!r} is empty ({len(paths)} .py files, "
            f"data.validation_percent={config.validation_percent}); add files or change the percent"
        )
    return {split: self._generate_examples(split, p) for split, p in splits.items()}

  def _generate_examples(self, split: str, paths: list[str]) -> Iterator[tuple[str, dict]]:
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
