"""The TFDS builder both local corpora share: files on disk, one example per file (`text`, `path`),
each file in train or validation by a stable hash of its path, so the split never depends on file
order. A corpus says which files it holds and how a file becomes an example."""

import abc
import hashlib
from collections.abc import Iterator

import tensorflow_datasets as tfds

from efficiency.errors import ConfigError


def is_validation(path: str, validation_percent: int) -> bool:
  """Whether the file at `path` belongs to the validation split (sha1 of path mod 100)."""
  digest = hashlib.sha1(path.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") % 100 < validation_percent


class FileCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A corpus of files; subclasses give `files`, `describe` and `_generate_examples`. The
  builder config holds `validation_percent`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  DESCRIPTION = ""

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
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict(
            {"text": tfds.features.Text(), "path": tfds.features.Text()}
        ),
    )

  @abc.abstractmethod
  def files(self) -> list[str]:
    """The corpus's files, as the paths its examples are keyed by."""

  def split_key(self, path: str) -> str:
    """What the split hashes for `path`: a name that stays the same wherever the corpus lives."""
    return path

  @abc.abstractmethod
  def describe(self) -> str:
    """What the files are, for the error when a split is empty."""

  @abc.abstractmethod
  def _generate_examples(self, split: str, paths: list[str]) -> Iterator[tuple[str, dict]]:
    """(key, example) for the files of one split."""

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download.
    percent = self.builder_config.validation_percent
    paths = self.files()
    splits = {"train": [], "validation": []}
    for path in paths:
      splits["validation" if is_validation(self.split_key(path), percent) else "train"].append(path)
    for split, split_paths in splits.items():
      if not split_paths:
        raise ConfigError(
            f"the {split} split of {self.describe()} is empty ({len(paths)} files, "
            f"data.validation_percent={percent}); add files or change data.validation_percent"
        )
    return {split: self._generate_examples(split, p) for split, p in splits.items()}
