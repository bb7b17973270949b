"""TFDS builder over a folder or glob of text files: one example per file, bytes kept as they are.

Unlike the stdlib corpus, nothing is skipped here: empty files and invalid UTF-8 are stored, and
`data.prepare` counts and drops them, so they show up in the data report.
"""

import dataclasses
import glob
import hashlib
import itertools
import os
from collections.abc import Iterator

import tensorflow_datasets as tfds

from data.file_corpus import FileCorpus
from efficiency.errors import MissingPathError


def text_files(pattern: str) -> list[str]:
  """Sorted absolute paths of the files a folder (recursively) or a glob names."""
  if os.path.isdir(pattern):
    pattern = os.path.join(pattern, "**", "*")
  paths = glob.glob(os.path.expanduser(pattern), recursive=True)
  return sorted(os.path.abspath(p) for p in paths if os.path.isfile(p))


def pattern_root(pattern: str) -> str:
  """The absolute folder a folder or glob starts from: the part before its first wildcard."""
  pattern = os.path.expanduser(pattern)
  if os.path.isdir(pattern):
    return os.path.abspath(pattern)
  parts = pattern.split(os.sep)
  literal = list(itertools.takewhile(lambda part: not glob.has_magic(part), parts[:-1]))
  return os.path.abspath(os.sep.join(literal) or os.curdir)


@dataclasses.dataclass
class TextCorpusConfig(tfds.core.BuilderConfig):
  """Which files to read and how much of them to hold out."""

  pattern: str = ""
  validation_percent: int = 5


def files_digest(paths: list[str], digest: "hashlib._Hash") -> "hashlib._Hash":
  """`digest` updated with each file's path, size and mtime: new files, new digest."""
  for path in paths:
    stat = os.stat(path)
    digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
  return digest


def make_config(pattern: str, validation_percent: int) -> TextCorpusConfig:
  """A config named after a hash of the files' paths, sizes and mtimes: new files, new build."""
  paths = text_files(pattern)
  if not paths:
    raise MissingPathError(f"data.text_glob={pattern!r} matches no files")
  digest = files_digest(paths, hashlib.sha1())
  return TextCorpusConfig(
      name=f"files-{digest.hexdigest()[:10]}-val{validation_percent}",
      description=f"{len(paths)} files matching {pattern}, {validation_percent}% held out.",
      pattern=pattern,
      validation_percent=validation_percent,
  )


class TextCorpus(FileCorpus):
  """Local text files, one example per file: `text` (raw bytes) and `path`."""

  DESCRIPTION = __doc__

  def files(self) -> list[str]:
    return text_files(self.builder_config.pattern)

  def split_key(self, path: str) -> str:
    """The path relative to the pattern's folder, so moving the corpus keeps its split."""
    return os.path.relpath(path, pattern_root(self.builder_config.pattern)).replace(os.sep, "/")

  def describe(self) -> str:
    return f"data.text_glob={self.builder_config.pattern!r}"

  def _generate_examples(self, split: str, paths: list[str]) -> Iterator[tuple[str, dict]]:
    del split
    for path in paths:
      with open(path, "rb") as f:
        yield path, {"text": f.read(), "path": path}
