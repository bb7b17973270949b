"""A Hugging Face model folder's files: `config.json`, safetensors shards (one file, or several
named by `model.safetensors.index.json`), read lazily tensor by tensor; and writing shards.

Every problem with the files (a missing one, a truncated or unreadable shard, a tensor of the
wrong dtype or shape) is one ConfigError line naming the file or tensor.
"""

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from efficiency.errors import ConfigError, MissingPathError

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
FLOAT_DTYPES = {"F32": np.float32, "BF16": ml_dtypes.bfloat16, "F16": np.float16}


def read_config(folder: Path) -> dict:
  """The folder's config.json."""
  if not folder.is_dir():
    raise MissingPathError(f"--from_hf={str(folder)!r} is not a folder")
  path = folder / CONFIG
  if not path.is_file():
    raise MissingPathError(f"--from_hf={str(folder)!r} has no {CONFIG}")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ConfigError(f"{path} is not valid JSON: {e}") from e


class Shards:
  """The tensors of a folder's safetensors files, by name. Use as a context manager."""

  def __init__(self, folder: Path):
    self.folder = folder
    self._open: dict[str, object] = {}
    self.weight_map = self._weight_map()

  def _weight_map(self) -> dict[str, str]:
    index = self.folder / INDEX
    if index.is_file():
      try:
        weight_map = json.loads(index.read_text())["weight_map"]
      except (json.JSONDecodeError, KeyError) as e:
        raise ConfigError(f"{index} is not a safetensors index (no weight_map): {e}") from e
      for file in sorted(set(weight_map.values())):
        if not (self.folder / file).is_file():
          raise MissingPathError(f"{index} names {file}, which is missing from {self.folder}")
      return weight_map
    files = [SINGLE] if (self.folder / SINGLE).is_file() else sorted(
        p.name for p in self.folder.glob("*.safetensors")
    )
    if not files:
      raise MissingPathError(f"{self.folder} has no {SINGLE}, {INDEX} or *.safetensors file")
    return {name: file for file in files for name in self._handle(file).keys()}

  def _handle(self, file: str):
    if file not in self._open:
      path = self.folder / file
      try:
        self._open[file] = safe_open(str(path), framework="numpy")
      except (SafetensorError, OSError) as e:
        raise ConfigError(f"{path} is not a readable safetensors file (truncated?): {e}") from e
    return self._open[file]

  def names(self) -> set[str]:
    return set(self.weight_map)

  def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Tensor `name`, checked to be a float tensor of `shape` (what the config implies)."""
    file = self.weight_map.get(name)
    if file is None:
      raise ConfigError(f"the checkpoint in {self.folder} has no tensor {name}")
    handle = self._handle(file)
    view = handle.get_slice(name)
    dtype, stored = view.get_dtype(), tuple(view.get_shape())
    if dtype not in FLOAT_DTYPES:
      raise ConfigError(
          f"tensor {name} in {file} has dtype {dtype}; expected one of {', '.join(FLOAT_DTYPES)}"
      )
    if stored != tuple(shape):
      raise ConfigError(
          f"tensor {name} in {file} has shape {list(stored)}; config.json implies {list(shape)}"
      )
    try:
      return handle.get_tensor(name)
    except (SafetensorError, OSError) as e:
      raise ConfigError(f"tensor {name} in {file} cannot be read: {e}") from e

  def close(self) -> None:
    self._open.clear()

  def __enter__(self) -> "Shards":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def shard_names(count: int) -> list[str]:
  """HF's shard file names: model.safetensors alone, else model-0000k-of-0000n.safetensors."""
  if count == 1:
    return [SINGLE]
  return [f"model-{k + 1:05d}-of-{count:05d}.safetensors" for k in range(count)]


def plan_shards(sizes: Iterable[tuple[str, int]], max_bytes: int) -> list[list[str]]:
  """Tensor names grouped into shards of at most `max_bytes` each (a bigger tensor alone)."""
  shards: list[list[str]] = [[]]
  used = 0
  for name, size in sizes:
    if shards[-1] and used + size > max_bytes:
      shards.append([])
      used = 0
    shards[-1].append(name)
    used += size
  return shards


def write_shards(
    folder: Path,
    shards: list[list[str]],
    tensor: Callable[[str], np.ndarray],
    progress: Callable[[int], None] = lambda n: None,
) -> None:
  """Writes the tensors of each shard (built one shard at a time by `tensor(name)`), and the
  index when there is more than one shard."""
  files = shard_names(len(shards))
  weight_map, total = {}, 0
  for file, names in zip(files, shards, strict=True):
    arrays = {name: tensor(name) for name in names}
    save_file(arrays, str(folder / file), metadata={"format": "pt"})
    total += sum(a.nbytes for a in arrays.values())
    weight_map.update(dict.fromkeys(names, file))
    progress(len(names))
  if len(files) > 1:
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX).write_text(json.dumps(index, indent=2) + "\n")
