"""A mixture trained end to end: tokens and eval losses per source in summary.json and
metrics.jsonl, each source's eval loss equal to evaluating that source alone, a resume with
other weights that keeps counting each source, and a run killed with SIGKILL that resumes bit for
bit."""

import json
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

from configs.default import get_config
from data import mixture
from data.pipeline import make_eval_batches
from efficiency.config import resolve
from efficiency.evaluation import Evaluator
from efficiency.train.inputs import tokenizer_of
from efficiency.train.loop import train_and_evaluate
from efficiency.workdir import files
from efficiency.workdir.restore import restore
from tests.helpers import ROOT, assert_same_run, tiny_train_flags


def _config(tmp_path, steps: int, weights: tuple[float, float]) -> ml_collections.ConfigDict:
  config = get_config()
  for flag in tiny_train_flags(tmp_path, tmp_path / "data", steps=steps, eval_every=10,
                               checkpoint_every=10):
    field, value = flag[len("--config."):].split("=", 1)
    *parents, name = field.split(".")
    node = config
    for part in parents:
      node = node[part]
    node[name] = type(node[name])(value)
  config.data.tokenizer = "bytes"
  config.data.shuffle_window = 8
  config.data.mixture = ml_collections.ConfigDict({
      label: {"weight": w, "name": "jsonl", "files": str(tmp_path / f"{label}.jsonl")}
      for label, w in zip(("prose", "code"), weights, strict=True)
  })
  return resolve(config, jax.device_count())


@pytest.fixture
def shards(tmp_path):
  rng = np.random.default_rng(0)
  words = ["the", "model", "reads", "a", "long", "story", "about", "data"]
  (tmp_path / "prose.jsonl").write_text("\n".join(
      json.dumps({"text": " ".join(rng.choice(words, 30))}) for _ in range(200)) + "\n")
  (tmp_path / "code.jsonl").write_text("\n".join(
      json.dumps({"text": f"def f{i}(x):\n  return x * {i} + {i % 7}\n"}) for i in range(200)
  ) + "\n")
  return tmp_path


def test_mixture_run_reports_each_source_and_resumes_with_other_weights(shards):
  workdir = shards / "run"
  first = train_and_evaluate(_config(shards, 10, (0.5, 0.5)), workdir)
  assert sum(first["tokens_per_source"].values()) == first["tokens_seen"] > 0
  config = _config(shards, 20, (0.9, 0.1))
  second = train_and_evaluate(config, workdir)
  assert second["resumed_from_step"] == 10
  assert sum(second["tokens_per_source"].values()) == second["tokens_seen"]
  added = {k: second["tokens_per_source"][k] - first["tokens_per_source"][k] for k in ("prose",
                                                                                      "code")}
  assert added["prose"] > 3 * added["code"] > 0  # the new weights, 9:1 by rows

  trained = restore(workdir)
  tokenizer = tokenizer_of(config)
  evaluator = Evaluator(trained.model, np.asarray(tokenizer.token_bytes, np.float32))
  for label, sub in mixture.source_configs(config).items():
    alone = make_eval_batches(sub, tokenizer, process_index=0, process_count=1)
    want = evaluator(trained.params, alone)
    np.testing.assert_allclose(second["eval_loss_per_source"][label], want["eval_loss"],
                               rtol=2e-5)
    np.testing.assert_allclose(second["eval_bpb_per_source"][label], want["eval_bpb"], rtol=2e-5)
  losses = second["eval_loss_per_source"]
  assert min(losses.values()) <= second["final_eval_loss"] <= max(losses.values())
  evals = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  evals = [r for r in evals if "eval_loss" in r]
  assert [r["step"] for r in evals] == [0, 10, 20]
  assert evals[-1]["eval_loss_per_source"] == losses
  assert evals[-1]["tokens_per_source"] == second["tokens_per_source"]


def test_mixture_run_killed_resumes_bitwise(shards):
  config = _config(shards, 20, (0.7, 0.3))
  config.checkpoint_every = 5
  reference = shards / "reference"
  train_and_evaluate(config, reference)
  (shards / "config.json").write_text(json.dumps(config.to_dict()))
  saved = str(shards / "config.json")
  (shards / "mixture_config.py").write_text(
      "import json\nimport ml_collections\n\n\ndef get_config(arg=None):\n"
      f"  return ml_collections.ConfigDict(json.loads(open({saved!r}).read()))\n"
  )
  workdir = shards / "killed"
  proc = subprocess.Popen(
      [sys.executable, "train.py", f"--workdir={workdir}",
       f"--config={shards / 'mixture_config.py'}"],
      cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
  )
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if files.checkpoint_steps(workdir):
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert files.checkpoint_steps(workdir) and files.checkpoint_steps(workdir)[-1] < 20
  summary = train_and_evaluate(config, workdir)
  assert_same_run(workdir, reference)
  expected = json.loads((reference / "summary.json").read_text())
  for key in ("tokens_per_source", "eval_loss_per_source", "eval_bpb_per_source"):
    assert summary[key] == expected[key], key
