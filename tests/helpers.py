"""Helpers the tests share: tiny configs and models, random batches and corpora, plain numpy
references, and running train.py. Fixtures live in the conftest files; everything a test
imports lives here."""

import contextlib
import fcntl
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from configs.default import get_config
from configs.finetune import get_config as get_finetune_config
from efficiency.config import resolve
from efficiency.model.transformer import Transformer, make_model
from efficiency.sharding.mesh import to_global
from efficiency.train.setup import Training
from efficiency.workdir.restore import TrainedModel

ROOT = Path(__file__).resolve().parents[1]


# The CUDA plugin (a dev dependency, for compiling for GPUs) logs through absl before absl is
# initialized when jax loads it, so every process prints these lines on a machine without a GPU.
_PLUGIN_LOG = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog|I\d{4} .*cudart_stub)"
)


def stderr_lines(stderr: str) -> list[str]:
  """A command's stderr lines, less the CUDA plugin's start-up log."""
  return [line for line in stderr.strip().splitlines() if not _PLUGIN_LOG.match(line)]


# Configs and batches.


def tiny_model_config(**overrides) -> ml_collections.ConfigDict:
  """A model config small enough for unit tests (nested settings as `sliding={"window": 4}`)."""
  cfg = get_config().model
  cfg.update(
      num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, d_ff=64, vocab_size=97,
      init_std=0.2,
  )
  for key, value in overrides.items():
    if isinstance(value, dict):
      cfg[key].update(value)
    else:
      cfg[key] = value
  return cfg


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  """The default config with the tiny model, batch 4 x 16 and 10 steps."""
  config = get_config()
  config.model = tiny_model_config()
  config.update(batch_size=4, seq_len=16, steps=10)
  config.optimizer.warmup_steps = 2
  config.update(overrides)
  return config


def random_packed_batch(rng: np.random.Generator, batch: int, length: int, vocab: int):
  """Random tokens in rows of 1-3 packed segments plus trailing padding."""
  tokens = rng.integers(1, vocab, size=(batch, length)).astype(np.int32)
  segment_ids = np.zeros((batch, length), np.int32)
  positions = np.zeros((batch, length), np.int32)
  for b in range(batch):
    cuts = np.sort(rng.choice(np.arange(2, length - 2), size=2, replace=False))
    bounds = [0, *cuts, length - 1]
    for s in range(3):
      segment_ids[b, bounds[s] : bounds[s + 1]] = s + 1
      positions[b, bounds[s] : bounds[s + 1]] = np.arange(bounds[s + 1] - bounds[s])
  tokens[segment_ids == 0] = 0
  return tokens, segment_ids, positions


def packed_batch(rng: np.random.Generator, config) -> dict[str, np.ndarray]:
  """A train batch of `config`'s shape: random packed rows, inputs and next-token targets."""
  tokens, segment_ids, positions = random_packed_batch(
      rng, config.batch_size, config.seq_len + 1, config.model.vocab_size
  )
  return {
      "inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": segment_ids[:, :-1],
      "positions": positions[:, :-1],
      "weights": ((segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] > 0))
      .astype(np.float32),
  }


def full_rows_batch(rng: np.random.Generator, config) -> dict[str, np.ndarray]:
  """A train batch of `config`'s shape: one document per full row, tokens below 256."""
  shape = (config.batch_size, config.seq_len)
  tokens = rng.integers(0, 256, size=(shape[0], shape[1] + 1)).astype(np.int32)
  return {
      "inputs": tokens[:, :-1], "targets": tokens[:, 1:],
      "segment_ids": np.ones(shape, np.int32),
      "positions": np.tile(np.arange(shape[1], dtype=np.int32), (shape[0], 1)),
      "weights": np.ones(shape, np.float32),
  }


# Training in process.


def run_steps(config, batches) -> tuple:
  """(final state, losses) of training a resolved `config` from seed 0 on `batches`."""
  training = Training(config)
  state = training.init(seed=0)
  losses = []
  for batch in batches:
    state, metrics = training.train_step(state, to_global(batch, training.rows_sharding))
    losses.append(float(metrics["loss"]))
  return state, losses


def tiny_peft_config(method: str, devices: int = 1, **peft):
  """A resolved fine-tuning config of a 2-layer model with `peft.method=method`."""
  config = get_finetune_config()
  config.model = tiny_model_config()
  config.update(batch_size=8, seq_len=16, steps=4)
  config.optimizer.update(warmup_steps=1, lr=1e-2, weight_decay=0.1)
  config.peft.update({"method": method, "rank": 4, **peft})
  return resolve(config, devices)


def run_peft(config, steps: int, base=None, seed: int = 0):
  """(initial state, final state, losses, training) after `steps` steps on fixed random batches."""
  rng = np.random.default_rng(seed)
  training = Training(config)
  initial = jax.device_get(training.init(config.seed, base))
  state = training.init(config.seed, base)
  losses = []
  for _ in range(steps):
    batch = to_global(packed_batch(rng, config), training.rows_sharding)
    state, metrics = training.train_step(state, batch)
    losses.append(float(metrics["loss"]))
  return initial, state, losses, training


# Models.


def tiny_model(seed: int, vocab: int = 4, layers: int = 1) -> tuple[nn.Module, dict]:
  """A one-layer (or `layers`) model over `vocab` tokens with large random weights, for exact
  sampling tests."""
  cfg = tiny_model_config(
      num_layers=layers, d_model=16, num_heads=2, num_kv_heads=1, d_ff=32, vocab_size=vocab,
      init_std=0.5,
  )
  model = Transformer(ml_collections.FrozenConfigDict(cfg))
  tokens = jnp.ones((1, 4), jnp.int32)
  params = jax.jit(model.init)(jax.random.key(seed), tokens, tokens, tokens)["params"]
  return model, nn.unbox(params)


def quant_config(**quant) -> ml_collections.ConfigDict:
  """A config of the tiny model (d_model 64) with `quant` overrides."""
  config = get_config()
  config.model = tiny_model_config(d_model=64, d_ff=128, num_layers=2)
  config.quant.update(quant)
  return config


def quant_batch(seed: int = 0, size: int = 2, length: int = 16, vocab: int = 97):
  """(tokens, segment_ids, positions) of a random packed batch, as jnp arrays."""
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(a) for a in random_packed_batch(rng, size, length, vocab))


def init_params(model: nn.Module, seed: int = 0) -> dict:
  """Unboxed parameters of `model`."""
  tokens, segment_ids, positions = quant_batch()
  boxed = model.init(jax.random.PRNGKey(seed), tokens, segment_ids, positions)
  return nn.meta.unbox(boxed["params"])


def trained_model(config: ml_collections.ConfigDict, seed: int = 0) -> TrainedModel:
  """`config`'s model with freshly initialized parameters, as the workdir loader returns one."""
  model = make_model(config)
  return TrainedModel(config, model, init_params(model, seed), step=0, workdir=None)


# Plain numpy references for attention.


def allowed_mask(segment_ids: np.ndarray, window: int | None = None) -> np.ndarray:
  """[B, 1, T, T] bool: key j <= query i, same non-padding document, and i - j < window."""
  b, t = segment_ids.shape
  i, j = np.arange(t)[:, None], np.arange(t)[None, :]
  ok = np.broadcast_to(j <= i, (b, t, t)).copy()
  if window is not None:
    ok &= i - j < window
  ok &= segment_ids[:, :, None] == segment_ids[:, None, :]
  ok &= (segment_ids != 0)[:, None, :]
  return ok[:, None]


def reference_attention(q, k, v, allowed, bias=None, scale=None) -> np.ndarray:
  """q [B,T,N,H], k [B,S,K,H], v [B,S,K,V], allowed [B,1|N,T,S], bias [B|1,N,T,S] -> [B,T,N,V].

  Key/value heads are repeated over their query groups; rows with no allowed key output 0."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  n, kh = q.shape[2], k.shape[2]
  k, v = np.repeat(k, n // kh, axis=2), np.repeat(v, n // kh, axis=2)
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  scores = np.einsum("btnh,bsnh->bnts", q, k) * scale
  if bias is not None:
    scores = scores + np.asarray(bias, np.float64)
  scores = np.where(allowed, scores, -np.inf)
  with np.errstate(invalid="ignore"):
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs = np.nan_to_num(probs / probs.sum(-1, keepdims=True))
  return np.einsum("bnts,bsnv->btnv", probs, v)


def reference_rms_norm(x, scale, eps=1e-6) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * np.asarray(scale)


# Corpora and data configs.

_WORDS = "def class return self import for in if else x y_1 = ( ) : None 0x1F 'str' \"s\" #".split()
_WORDS += ["é", "π", "→", "😀", "\\"]


def random_source(rng: random.Random, marker: str) -> str:
  """Python-like text with indentation, tabs, runs of spaces, blank lines and non-ASCII."""
  lines = [f"# {marker}"]
  for _ in range(rng.randint(3, 60)):
    indent = rng.choice(["", "    ", "        ", "\t", "\t\t", "  "])
    words = [rng.choice(_WORDS) for _ in range(rng.randint(0, 10))]
    trailing = rng.choice(["", "", "", " ", "   ", "\t"])
    lines.append(indent + rng.choice([" ", "  ", " "]).join(words) + trailing)
  newline = "\r\n" if rng.random() < 0.1 else "\n"
  return newline.join(lines) + rng.choice(["", "\n", "\n\n"])


def write_corpus(root, num_files: int = 30, seed: int = 0) -> dict[str, str]:
  """Writes a corpus under `root`; returns the texts that belong in it, by relative path.

  Also writes files the corpus must skip: an empty file, a non-UTF-8 file, and files under
  `tests/`, `test/` and `site-packages/`.
  """
  rng = random.Random(seed)
  texts = {}
  for i in range(num_files):
    path = f"pkg{i % 3}/module_{i}.py" if i % 2 else f"module_{i}.py"
    texts[path] = random_source(rng, f"doc-{i}")
  texts["tiny.py"] = "x"
  for path, text in texts.items():
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_bytes(text.encode("utf-8"))
  for excluded in ["tests/test_a.py", "test/test_b.py", "site-packages/lib.py", "pkg0/tests/c.py"]:
    (root / excluded).parent.mkdir(parents=True, exist_ok=True)
    (root / excluded).write_text("# excluded\n")
  (root / "empty.py").write_text("  \n")
  (root / "latin1.py").write_bytes("# caf\xe9\n".encode("latin-1"))
  (root / "notes.txt").write_text("not python\n")
  return texts


def data_config(root: str, data_dir: str, **data) -> ml_collections.ConfigDict:
  """The default config, shrunk to the tiny corpus: batch 4 x 32, vocab 400, 20% validation."""
  config = get_config()
  config.batch_size = 4
  config.seq_len = 32
  config.eval_batches = 2
  config.model.vocab_size = 400
  config.data.update(
      data_dir=data_dir, corpus_root=root, validation_percent=20, worker_threads=2, prefetch=2
  )
  config.data.update(data)
  return config


# train.py end to end.


def tiny_train_flags(corpus: Path, data_dir: Path, **overrides) -> list[str]:
  """train.py flags for a seconds-long run of a tiny model on `corpus`."""
  values = {
      "steps": 40, "batch_size": 4, "seq_len": 32, "eval_every": 20, "eval_batches": 2,
      "log_every": 5, "checkpoint_every": 20, "target_loss": 6.0,
      "model.num_layers": 2, "model.d_model": 32, "model.num_heads": 4, "model.num_kv_heads": 2,
      "model.d_ff": 64, "model.vocab_size": 512, "optimizer.warmup_steps": 5,
      "data.validation_percent": 15,
      "data.corpus_root": str(corpus), "data.data_dir": str(data_dir),
  }
  values.update(overrides)
  return [f"--config.{k}={v}" for k, v in values.items()]


def tiny_train_config(corpus: Path, data_dir: Path, **overrides) -> ml_collections.ConfigDict:
  """The resolved config of `tiny_train_flags` (overrides as `**{"optimizer.lr": 1.0}`), for
  training in process."""
  config = get_config()
  values = dict(
      flag[len("--config."):].split("=", 1) for flag in tiny_train_flags(corpus, data_dir)
  )
  values.update(overrides)
  for field, value in values.items():
    *parents, name = field.split(".")
    node = config
    for part in parents:
      node = node[part]
    node[name] = type(node[name])(value) if isinstance(value, str) else value
  return resolve(config, jax.device_count())


def tiny_overrides(corpus: Path, data_dir: Path, **overrides) -> dict[str, str]:
  """`tiny_train_flags` as {field: value}, for sweep files."""
  flags = tiny_train_flags(corpus, data_dir, **overrides)
  return dict(flag[len("--config."):].split("=", 1) for flag in flags)


def train_command(workdir: Path, flags: list[str]) -> list[str]:
  return [sys.executable, "train.py", f"--workdir={workdir}", *flags]


def run_train(workdir: Path, flags: list[str]) -> subprocess.CompletedProcess:
  proc = subprocess.run(
      train_command(workdir, flags), cwd=ROOT, capture_output=True, text=True, timeout=600
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def read_metrics(workdir: Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def final_params(workdir: Path) -> dict:
  """The parameters of the newest checkpoint, on this process's first device (whatever mesh and
  process count saved them)."""
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.CheckpointManager(workdir / "checkpoints") as manager:
    directory = Path(manager.directory) / str(manager.latest_step()) / "state"
  with ocp.StandardCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(directory).item_metadata["params"]
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        dict(metadata))
  restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device), target)
  with ocp.PyTreeCheckpointer() as checkpointer:
    restored = checkpointer.restore(directory, args=ocp.args.PyTreeRestore(
        {"params": target}, restore_args={"params": restore_args}, partial_restore=True))
  return restored["params"]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_module(module: str, *args: str, devices: int = 1, timeout: int = 300) -> dict:
  """Runs `python -m module args` with `devices` simulated CPU devices; its last stdout line
  parsed as JSON."""
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  proc = subprocess.run(
      [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=timeout,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_same_run(workdir: Path, reference: Path) -> None:
  """`workdir` ended exactly as `reference`: summary numbers, every logged loss, the parameters
  of the newest checkpoint bit for bit."""
  summary = json.loads((workdir / "summary.json").read_text())
  expected = json.loads((reference / "summary.json").read_text())
  assert summary["status"] == "completed"
  for key in ("steps", "final_eval_loss", "tokens_seen", "tokens_to_target"):
    assert summary[key] == expected[key], key
  losses = lambda w: {m["step"]: m["loss"] for m in read_metrics(w) if "loss" in m}
  evals = lambda w: {m["step"]: m["eval_loss"] for m in read_metrics(w) if "eval_loss" in m}
  assert losses(workdir) == losses(reference)
  assert evals(workdir) == evals(reference)
  leaves = lambda tree: [np.asarray(x) for x in jax.tree.leaves(tree)]
  for x, y in zip(leaves(final_params(workdir)), leaves(final_params(reference)), strict=True):
    np.testing.assert_array_equal(x, y)


@contextlib.contextmanager
def libtpu_lock() -> Iterator[None]:
  """Holds a cross-process lock while a test starts a process that uses libtpu (one process
  at a time may: libtpu keeps its own lockfile until the process exits), so test workers take
  turns instead of failing. Run libtpu code in a subprocess inside this, never in the test
  process itself."""
  with open(Path(tempfile.gettempdir()) / "efficiency-tests-libtpu.lock", "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)
