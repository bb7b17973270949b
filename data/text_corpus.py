"""TFDS builder over a folder or glob of text files: one example per file, bytes kept as they are.

Unlike the stdlib corpus, nothing is skipped here: empty files and invalid UTF-8 are stored, and
`data.prepare` counts and drops them, so they show up in the data report.
"""

import dataclasses
import glob
import hashlib
import os
from collections.abc import Iterator

import tensorflow_datasets as tfds

from data.stdlib_corpus import is_validation
from efficiency.errors import ConfigError, MissingPathError


def text_files(pattern: str) -> list[str]:
  """Sorted absolute paths of the files a folder (recursively) or a glob names."""
  if os.path.isdir(pattern):
    pattern = os.path.join(pattern, "**", "*")
  paths = glob.glob(os.path.expanduser(pattern), recursive=True)
  return sorted(os.path.abspath(p) for p in paths if os.path.isfile(p))


@dataclasses.dataclass
class TextCorpusConfig(tfds.core.BuilderConfig):
  """Which files to read and how much of them to hold out."""

  pattern: str = ""
  validation_percent: int = 5


def make_config(pattern: str, validation_percent: int) -> TextCorpusConfig:
  """A config named after a hash of the files' paths, sizes and mtimes: new files, new build."""
  paths = text_files(pattern)
  if not paths:
    raise MissingPathError(f"data.text_glob={pattern!r} matches no files")
  digest = hashlib.sha1()
  for path in paths:
    stat = os.stat(path)
    digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
  return TextCorpusConfig(
      name=f"files-{digest.hexdigest()[:10]}-val{validation_percent}",
      description=f"{len(paths)} files matching {pattern}, {validation_percent}% held out.",
      pattern=pattern,
      validation_percent=validation_percent,
  )


class TextCorpus(tfds.core.GeneratorBasedBuilder):
  """Local text files, one example per file: `text` (raw bytes) and `path`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> None:
    """None: there is no checksums file next to this code (see StdlibCorpus.code_path)."""
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
    splits = {"train": [], "validation": []}
    for path in text_files(config.pattern):
      split = "validation" if is_validation(path, config.validation_percent) else "train"
      splits[split].append(path)
    for split, paths in splits.items():
      if not paths:
        raise ConfigError(
            f"the {split} split of data.text_glob={config.pattern!r} is empty; add files or "
            f"change data.validation_percent={config.validation_percent}"
        )
    return {split: self._generate_examples(paths) for split, paths in splits.items()}

  def _generate_examples(self, paths: list[str]) -> Iterator[tuple[str, dict]]:
    for path in paths:
      with open(path, "rb") as f:
        yield path, {"text": f.read(), "path": path}
