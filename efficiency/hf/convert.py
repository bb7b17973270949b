"""Hugging Face Qwen2 / Llama checkpoints into a workdir, and a workdir out to one.

Import streams tensor by tensor: each of our parameters (a scanned stack of layers at most) is
assembled on the host from the shards and placed straight into its sharding on the mesh, so the
host never holds a second full copy of the model. Export writes one shard at a time.
"""

import shutil
import tempfile
from pathlib import Path

import jax
import ml_collections
import ml_dtypes
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from tqdm import tqdm

from data.tokenizer import HFTokenizer
from efficiency.errors import ConfigError, MissingPathError
from efficiency.hf import files, params
from efficiency.hf.config import MIN_CONTEXT, check_exportable, hf_config, model_section
from efficiency.hf.tokenizer import SPM_FILE, export_tokenizer, sentencepiece_folder
from efficiency.train import checkpoint
from efficiency.train.inputs import tokenizer_of
from efficiency.train.setup import Training
from efficiency.workdir import files as workdir_files
from efficiency.workdir.restore import restore

TOKENIZER_DIR = "tokenizer"  # inside an imported workdir: the checkpoint's tokenizer files
NUMPY_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


def imported_config(
    base: ml_collections.ConfigDict,
    hf_dir: str | Path,
    scan_layers: bool = True,
    param_dtype: str = "float32",
) -> ml_collections.ConfigDict:
  """`base` (a train.py config) with the model of the checkpoint in `hf_dir` and its tokenizer
  (`data.tokenizer='hf'`: its tokenizer.json, or its sentencepiece tokenizer.model converted into
  a temporary folder); resolve it before `import_checkpoint`."""
  hf_dir = Path(hf_dir).absolute()
  section = model_section(files.read_config(hf_dir))
  tokenizer_dir = hf_dir
  if not (hf_dir / HFTokenizer.FILE).is_file():
    if not (hf_dir / SPM_FILE).is_file():
      raise MissingPathError(
          f"--from_hf={str(hf_dir)!r} has neither {HFTokenizer.FILE} nor {SPM_FILE}; the model "
          "needs its tokenizer"
      )
    tokenizer_dir = Path(tempfile.mkdtemp(prefix="hf-tokenizer-"))
    sentencepiece_folder(hf_dir / SPM_FILE, tokenizer_dir, section["vocab_size"])
  config = ml_collections.ConfigDict(base.to_dict())
  rope = section.pop("rope")
  config.model.rope.base = rope["base"]
  config.model.rope.scaling.update(rope["scaling"])
  config.model.update(section)
  config.model.scan_layers = scan_layers
  config.model.param_dtype = param_dtype
  config.data.tokenizer = "hf"
  config.data.tokenizer_dir = str(tokenizer_dir)
  return config


def _check_new(folder: Path, flag: str, marker: str) -> None:
  if folder.exists() and not folder.is_dir():
    raise ConfigError(f"{flag}={str(folder)!r} is a file; give a new folder")
  if (folder / marker).exists():
    raise ConfigError(f"{flag}={str(folder)!r} already holds {marker}; give a new folder")


def load_params(shards: files.Shards, training: Training, progress: bool = True) -> dict:
  """`training`'s parameters read from `shards`, each placed in its sharding on the mesh."""
  model = training.config.model
  abstract = flatten_dict(training.abstract_state.params)
  shardings = flatten_dict(training.base_sharding)
  entries = params.entries(model, {path: leaf.shape for path, leaf in abstract.items()})
  expected = {e.name for e in entries}
  unused = sorted(
      name for name in shards.names() - expected
      if not name.endswith(params.IGNORED_SUFFIXES)
      and not (model.tie_embeddings and name == "lm_head.weight")
  )
  if unused:
    raise ConfigError(
        f"the checkpoint in {shards.folder} has {len(unused)} tensors this model does not use "
        f"(first: {', '.join(unused[:3])}); is config.json its config?"
    )
  by_path: dict[tuple, list[params.Entry]] = {}
  for entry in entries:
    by_path.setdefault(entry.path, []).append(entry)
  placed = {}
  for path, group in tqdm(by_path.items(), desc="Importing", unit="tensor", disable=not progress):
    leaf = abstract[path]
    parts = [
        params.from_hf(shards.get(e.name, e.hf_shape), e.shape, e.layout).astype(leaf.dtype)
        for e in group
    ]
    host = np.stack(parts) if group[0].layer is not None else parts[0]
    placed[path] = _place(host, shardings[path])
  return unflatten_dict(placed)


def _place(host: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  """`host` as a global array in `sharding`: each device (of every process) gets its slice."""
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def import_checkpoint(
    hf_dir: str | Path,
    workdir: str | Path,
    config: ml_collections.ConfigDict,
    progress: bool = True,
) -> dict:
  """Writes `workdir` from the checkpoint in `hf_dir` under the resolved `config`
  (`imported_config`): its tokenizer files, a step-0 checkpoint of the weights alone (a
  fine-tuning run starts its own optimizer state) and config.json, last. Returns what was
  imported."""
  hf_dir, workdir = Path(hf_dir).absolute(), Path(workdir).absolute()
  _check_new(workdir, "--workdir", workdir_files.CHECKPOINTS)
  training = Training(config)
  with files.Shards(hf_dir) as shards:
    base = load_params(shards, training, progress)
  leaves = jax.tree.leaves(base)
  report = {
      "workdir": str(workdir),
      "model_type": files.read_config(hf_dir)["model_type"],
      "parameters": int(sum(x.size for x in leaves)),
      "sharded_tensors": sum(not x.sharding.is_fully_replicated for x in leaves),
  }
  del leaves
  tokenizer_dir, source = workdir / TOKENIZER_DIR, Path(config.data.tokenizer_dir)
  config = ml_collections.ConfigDict(config.to_dict())
  config.data.tokenizer_dir = str(tokenizer_dir)
  checkpoint.save_weights(workdir, 0, base)
  if jax.process_index() == 0:
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    for name in files.TOKENIZER_FILES:
      if (source / name).is_file():
        shutil.copyfile(source / name, tokenizer_dir / name)
    workdir_files.write_json_atomic(workdir / workdir_files.CONFIG, config.to_dict())
  return report


def export_checkpoint(
    workdir: str | Path,
    out: str | Path,
    step: int | None = None,
    dtype: str | None = None,
    max_shard_bytes: int = 5 * 2**30,
    progress: bool = True,
) -> dict:
  """Writes the model of `workdir` (its newest or given step; a PEFT run's merged weights) to
  `out` as a Hugging Face folder: safetensors shards, config.json, generation_config.json and
  the run's tokenizer (an `hf` one's files, or a `sentencepiece` or `bytes` one converted to a
  tokenizer.json of the same ids). Returns what was written; "tokenizer" names the kind."""
  out = Path(out).absolute()
  _check_new(out, "--to_hf", files.CONFIG)
  check_exportable(workdir_files.load_config(workdir))
  trained = restore(workdir, step)
  config = trained.config
  dtype = dtype or config.model.param_dtype
  if dtype not in NUMPY_DTYPES:
    raise ConfigError(f"--dtype={dtype!r} is invalid; valid choices: {sorted(NUMPY_DTYPES)}")
  np_dtype = np.dtype(NUMPY_DTYPES[dtype])
  flat = flatten_dict(trained.params)
  entries = {e.name: e for e in params.entries(config.model, {p: x.shape for p, x in flat.items()})}
  sizes = [(name, int(np.prod(e.hf_shape)) * np_dtype.itemsize) for name, e in entries.items()]
  shards = files.plan_shards(sizes, max_shard_bytes)

  def tensor(name: str) -> np.ndarray:
    entry = entries[name]
    x = np.asarray(flat[entry.path])
    x = x if entry.layer is None else x[entry.layer]
    return np.ascontiguousarray(params.to_hf(x, entry.layout).astype(np_dtype))

  out.mkdir(parents=True, exist_ok=True)
  with tqdm(total=len(entries), desc="Exporting", unit="tensor", disable=not progress) as bar:
    files.write_shards(out, shards, tensor, bar.update)
  tokenizer = tokenizer_of(config)
  if isinstance(tokenizer, HFTokenizer):
    for name in files.TOKENIZER_FILES:
      if (Path(tokenizer.folder) / name).is_file():
        shutil.copyfile(Path(tokenizer.folder) / name, out / name)
    tokenizer_kind = "hf"
  else:
    tokenizer_kind = export_tokenizer(tokenizer, out, max(int(config.seq_len), MIN_CONTEXT))
  bos_id, eos_id = tokenizer.bos_id, tokenizer.eos_id
  hf = hf_config(config, bos_id, eos_id, dtype)
  workdir_files.write_json_atomic(out / "generation_config.json",
                                  {"bos_token_id": bos_id, "eos_token_id": eos_id})
  workdir_files.write_json_atomic(out / files.CONFIG, hf)
  return {
      "model_type": hf["model_type"],
      "tensors": len(entries),
      "shards": len(shards),
      "bytes": sum(size for _, size in sizes),
      "tokenizer": tokenizer_kind,
      "step": trained.step,
  }
