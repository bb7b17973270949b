"""Fixtures for data tests: a tiny random corpus of .py files and configs reading it."""

import random

import ml_collections
import pytest

from configs.default import get_config

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


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> tuple[str, dict[str, str]]:
  """A tiny corpus shared by the session: its root and its expected texts by path."""
  root = tmp_path_factory.mktemp("corpus")
  return str(root), write_corpus(root)


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory) -> str:
  """One data dir for the session, so the corpus is prepared and tokenizers trained once."""
  return str(tmp_path_factory.mktemp("data_dir"))


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


@pytest.fixture
def config(corpus, shared_data_dir) -> ml_collections.ConfigDict:
  return data_config(corpus[0], shared_data_dir)
