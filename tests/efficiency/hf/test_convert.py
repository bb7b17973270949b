"""Hugging Face import and export: the frozen transformers fixtures reproduced (logits, greedy
tokens, token ids), bitwise round trips, a sharded import, and bad checkpoints as one line."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from safetensors.numpy import load_file, save_file

from configs.default import get_config
from configs.finetune import get_config as get_finetune_config
from data.tokenizer import HFTokenizer
from efficiency.config import resolve
from efficiency.errors import ConfigError, MissingPathError
from efficiency.hf.config import hf_config, model_section
from efficiency.hf.convert import export_checkpoint, import_checkpoint, imported_config
from efficiency.serving.generate import generate
from efficiency.serving.loading import check_same_tokenizer
from efficiency.serving.sampling import Sampling
from efficiency.train import checkpoint
from efficiency.train.inputs import tokenizer_of
from efficiency.train.setup import Training
from efficiency.workdir import files
from efficiency.workdir.restore import restore
from tests.helpers import (
    ROOT,
    run_module,
    run_peft,
    run_train,
    stderr_lines,
    tiny_config,
    tiny_train_flags,
)

FIXTURES = ROOT / "tests" / "fixtures" / "hf"


def _import(hf_dir: Path, workdir: Path, scan_layers: bool = True, **mesh) -> dict:
  config = imported_config(get_config(), hf_dir, scan_layers)
  config.mesh.update(mesh)
  return import_checkpoint(hf_dir, workdir, resolve(config, jax.device_count()), progress=False)


def _logits(trained, tokens_BT: np.ndarray) -> np.ndarray:
  tokens_BT = jnp.asarray(tokens_BT)
  positions_BT = jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape)
  return np.asarray(
      trained.model.apply({"params": trained.params}, tokens_BT, jnp.ones_like(tokens_BT),
                          positions_BT)
  )


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> dict[str, Path]:
  """Both fixtures imported once: qwen2 with scanned layers, llama unscanned."""
  root = tmp_path_factory.mktemp("imported")
  for name, scan in (("qwen2", True), ("llama", False)):
    _import(FIXTURES / name, root / name, scan_layers=scan)
  return {name: root / name for name in ("qwen2", "llama")}


@pytest.mark.parametrize("name", ["qwen2", "llama"])
def test_import_reproduces_transformers(imported, name):
  """Logits within 1e-4 of what transformers computed (float32), the same greedy tokens, and
  the checkpoint's own tokenizer giving transformers' ids."""
  expected = np.load(FIXTURES / name / "expected.npz")
  trained = restore(imported[name])
  np.testing.assert_allclose(_logits(trained, expected["input_ids"]), expected["logits"],
                             atol=1e-4, rtol=0)
  prompts = list(expected["input_ids"])
  greedy = generate(trained.model, trained.params, prompts, 8, Sampling(temperature=0.0), None)
  np.testing.assert_array_equal(np.stack(greedy), expected["greedy"])
  tokenizer = tokenizer_of(trained.config)
  text = json.loads((FIXTURES / name / "text.json").read_text())["text"]
  np.testing.assert_array_equal(tokenizer.encode(text), expected["text_ids"])
  assert tokenizer.decode(tokenizer.encode(text)) == text


def _random_workdir(workdir: Path, **model) -> None:
  """A workdir holding a freshly initialized model (vocabulary of the fixtures' tokenizer)."""
  config = tiny_config()
  config.model.update(vocab_size=320, **model)
  config.model.init_std = 0.3
  config.data.update(tokenizer="hf", tokenizer_dir=str(FIXTURES / "qwen2"))
  config = resolve(config, jax.device_count())
  training = Training(config)
  workdir.mkdir(parents=True)
  checkpoint.save_state(workdir, 7, training.init(seed=3))
  files.write_json_atomic(workdir / files.CONFIG, config.to_dict())


@pytest.mark.parametrize(
    "tied, bias, scan",
    [
        (True, True, True),
        (False, False, False),
        pytest.param(True, False, False, marks=pytest.mark.slow),
        pytest.param(False, True, True, marks=pytest.mark.slow),
    ],
)
def test_export_then_import_is_bitwise(tmp_path, tied, bias, scan):
  _random_workdir(tmp_path / "run", tie_embeddings=tied, qkv_bias=bias, scan_layers=scan)
  report = export_checkpoint(tmp_path / "run", tmp_path / "hf", progress=False)
  assert report["model_type"] == ("qwen2" if bias else "llama") and report["step"] == 7
  hf = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert hf["tie_word_embeddings"] is tied
  assert ("lm_head.weight" in load_file(tmp_path / "hf" / "model.safetensors")) is not tied
  _import(tmp_path / "hf", tmp_path / "back", scan_layers=scan)
  before, after = restore(tmp_path / "run"), restore(tmp_path / "back")
  flat_before, flat_after = flatten_dict(before.params), flatten_dict(after.params)
  assert flat_before.keys() == flat_after.keys()
  for path, value in flat_before.items():
    np.testing.assert_array_equal(flat_after[path], value, err_msg="/".join(path))
  tokens = np.random.default_rng(0).integers(0, 320, (2, 12))
  np.testing.assert_array_equal(_logits(after, tokens), _logits(before, tokens))


def test_export_shards_and_reads_them_back(imported, tmp_path):
  """A small shard limit gives several shards and an index; the import reads them."""
  report = export_checkpoint(imported["llama"], tmp_path / "hf", max_shard_bytes=150_000,
                             progress=False)
  index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
  assert report["shards"] == len(set(index["weight_map"].values())) > 1
  assert (tmp_path / "hf" / "tokenizer.json").is_file()
  _import(tmp_path / "hf", tmp_path / "back")
  expected = np.load(FIXTURES / "llama" / "expected.npz")
  np.testing.assert_allclose(_logits(restore(tmp_path / "back"), expected["input_ids"]),
                             expected["logits"], atol=1e-4, rtol=0)


def test_sharded_import_equals_single_device(imported, tmp_path):
  """Imported on 8 simulated devices with fsdp=4, tensor=2: sharded tensors, same values."""
  report = run_module(
      "evals.convert", f"--from_hf={FIXTURES / 'qwen2'}", f"--workdir={tmp_path / 'sharded'}",
      "--fsdp=4", "--tensor=2", devices=8,
  )
  assert report["sharded_tensors"] > 0
  single, sharded = restore(imported["qwen2"]), restore(tmp_path / "sharded")
  for path, value in flatten_dict(single.params).items():
    np.testing.assert_array_equal(flatten_dict(sharded.params)[path], value)


def _broken(tmp_path: Path, name: str = "qwen2") -> Path:
  folder = tmp_path / "broken"
  shutil.copytree(FIXTURES / name, folder)
  return folder


def _edit_config(folder: Path, **fields) -> None:
  hf = json.loads((folder / "config.json").read_text())
  hf.update(fields)
  (folder / "config.json").write_text(json.dumps(hf))


def test_bad_checkpoints_are_one_clear_error(tmp_path):
  folder = _broken(tmp_path)
  (folder / "config.json").unlink()
  with pytest.raises(MissingPathError, match=r"--from_hf='.*broken' has no config.json"):
    _import(folder, tmp_path / "w")

  folder = _broken(tmp_path / "a", "llama")
  (folder / "model-00003-of-00004.safetensors").unlink()
  with pytest.raises(MissingPathError, match=r"names model-00003-of-00004.safetensors, which is"):
    _import(folder, tmp_path / "w")

  folder = _broken(tmp_path / "b")
  with open(folder / "model.safetensors", "r+b") as f:
    f.truncate(100_000)
  with pytest.raises(ConfigError, match=r"model.safetensors is not a readable safetensors file"):
    _import(folder, tmp_path / "w")

  folder = _broken(tmp_path / "c")
  tensors = load_file(folder / "model.safetensors")
  tensors["model.norm.weight"] = tensors["model.norm.weight"].astype(np.int32)
  save_file(tensors, folder / "model.safetensors")
  with pytest.raises(ConfigError, match=r"tensor model.norm.weight in model.safetensors has "
                     r"dtype I32; expected one of F32, BF16, F16"):
    _import(folder, tmp_path / "w")

  folder = _broken(tmp_path / "d")
  _edit_config(folder, intermediate_size=128)
  with pytest.raises(ConfigError, match=r"tensor model.layers.0.mlp.gate_proj.weight in "
                     r"model.safetensors has shape \[96, 64\]; config.json implies \[128, 64\]"):
    _import(folder, tmp_path / "w")
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"model_type": "mixtral"}, r"model_type='mixtral' is not supported; valid choices: "
                                    r"llama, qwen2"),
        ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4, "factor": 4.0}},
         r"rope_type='longrope' is not supported; valid choices: default, linear, llama3, yarn"),
        ({"rope_parameters": None, "rope_scaling": {"type": "dynamic", "factor": 2.0}},
         r"rope_type='dynamic' is not supported; valid choices: default, linear, llama3, yarn"),
        ({"partial_rotary_factor": 0.5}, r"partial_rotary_factor=0.5 is not supported"),
        ({"use_sliding_window": True}, r"use_sliding_window/layer_types"),
        ({"hidden_act": "gelu"}, r"hidden_act='gelu' is not supported"),
    ],
)
def test_unsupported_architectures_say_why(tmp_path, fields, message):
  folder = _broken(tmp_path)
  _edit_config(folder, **fields)
  with pytest.raises(ConfigError, match=message):
    _import(folder, tmp_path / "w")


def test_export_refuses_what_hf_cannot_hold(tmp_path):
  config = tiny_config()
  config.model.attention = "mla"
  (tmp_path / "run").mkdir()
  files.write_json_atomic(tmp_path / "run" / files.CONFIG, config.to_dict())
  with pytest.raises(ConfigError, match=r"cannot export to Hugging Face: model.attention='mla'"):
    export_checkpoint(tmp_path / "run", tmp_path / "hf", progress=False)


def test_models_sharing_a_tokenizer_decode_together(imported):
  """Imported workdirs compare by their tokenizer.json's contents; a fine-tuning run by the
  tokenizer it follows through data.tokenizer_from."""
  qwen, llama = (files.load_config(imported[name]) for name in ("qwen2", "llama"))
  check_same_tokenizer([qwen, llama], ["qwen2", "llama"])
  finetune = get_config()
  finetune.model.vocab_size = 320
  finetune.data.update(name="stdlib_tests", tokenizer_from=str(imported["qwen2"]))
  check_same_tokenizer([qwen, finetune], ["qwen2", "finetune"])
  finetune.data.tokenizer_from = ""
  with pytest.raises(ConfigError, match=r"different vocabularies \(qwen2: tokenizer=hf"):
    check_same_tokenizer([qwen, finetune], ["qwen2", "finetune"])


def test_lora_fine_tuning_starts_from_the_imported_weights(imported):
  """`init_from` an imported workdir: its model and tokenizer, and LoRA's effective weights at
  step 0 are exactly the checkpoint's."""
  config = get_finetune_config()
  config.update(init_from=str(imported["qwen2"]), batch_size=4, seq_len=16, steps=2)
  config.peft.update(method="lora", rank=4)
  config = resolve(config, 1)
  assert config.model.vocab_size == 320 and config.model.qkv_bias
  assert isinstance(tokenizer_of(config), HFTokenizer)
  base = restore(imported["qwen2"]).params
  initial, state, losses, training = run_peft(config, 2, base)
  effective = flatten_dict(jax.device_get(training.effective_params(state)))
  for path, value in flatten_dict(training.method.combine(initial.params, initial.frozen)).items():
    np.testing.assert_array_equal(value, flatten_dict(base)[path])
  assert np.isfinite(losses).all() and effective.keys() == flatten_dict(base).keys()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--from_hf=/nonexistent", "--workdir=W"],
         "error: --from_hf='/nonexistent' is not a folder"),
        (["--workdir=W"], "error: give --workdir and exactly one of --from_hf (import) or --to_hf"),
    ],
)
def test_convert_command_line_errors_are_one_line(args, message):
  proc = subprocess.run([sys.executable, "-m", "evals.convert", *args], cwd=ROOT,
                        capture_output=True, text=True)
  lines = stderr_lines(proc.stderr)
  assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith(message)


def test_import_needs_the_tokenizer(tmp_path):
  folder = _broken(tmp_path)
  (folder / "tokenizer.json").unlink()
  with pytest.raises(MissingPathError, match=r"--from_hf='.*broken' has neither tokenizer.json "
                     r"nor tokenizer.model; the model needs its tokenizer"):
    _import(folder, tmp_path / "w")
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("name", ["llama3", "qwen2_yarn", "qwen2_head_dim", "sentencepiece"])
def test_import_reproduces_transformers_scaled_rope_and_head_dim(tmp_path, name):
  """llama3 and yarn rope scaling, a Qwen2 head_dim != d_model / heads, and an exported
  sentencepiece run: transformers' logits (1e-4) and greedy tokens (and text); the scaling
  exports back in transformers' fields (with its defaults written out)."""
  folder = FIXTURES / name
  expected = np.load(folder / "expected.npz")
  _import(folder, tmp_path / "w")
  trained = restore(tmp_path / "w")
  np.testing.assert_allclose(_logits(trained, expected["input_ids"]), expected["logits"],
                             atol=1e-4, rtol=0)
  greedy = generate(trained.model, trained.params, list(expected["input_ids"]), 8,
                    Sampling(temperature=0.0), None)
  np.testing.assert_array_equal(np.stack(greedy), expected["greedy"])
  if name == "sentencepiece":
    tokenizer = tokenizer_of(trained.config)
    assert [tokenizer.decode(g) for g in greedy] == list(expected["greedy_text"])
  export_checkpoint(tmp_path / "w", tmp_path / "hf", progress=False)
  written = json.loads((tmp_path / "hf" / "config.json").read_text())
  original = json.loads((folder / "config.json").read_text())
  assert original["rope_parameters"].items() <= written["rope_parameters"].items()
  assert written["head_dim"] == original.get("head_dim", written["head_dim"])


def test_import_from_a_sentencepiece_model_alone(tmp_path):
  """A folder with tokenizer.model and no tokenizer.json imports with the same ids; a model
  whose pieces are not the embedding rows is one line, nothing written."""
  folder = _broken(tmp_path, "sentencepiece")
  (folder / "tokenizer.json").unlink()
  expected = np.load(FIXTURES / "sentencepiece" / "expected.npz")
  texts = json.loads((folder / "texts.json").read_text())["texts"]
  config = imported_config(get_config(), folder)
  tokenizer = HFTokenizer(config.data.tokenizer_dir)
  np.testing.assert_array_equal(tokenizer.encode(texts[1]),
                                expected["ids"][expected["offsets"][1]:expected["offsets"][2]])
  _edit_config(folder, vocab_size=400)
  with pytest.raises(ConfigError, match=r"tokenizer.model has 384 pieces but the checkpoint's "
                     r"vocab_size=400 embedding rows"):
    _import(folder, tmp_path / "w")
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
@pytest.mark.parametrize("tokenizer", ["sentencepiece", "bytes"])
def test_whole_round_trip_of_a_run(tmp_path, tiny_corpus, tokenizer):
  """docs/hf.md's trip: train, export (with the run's tokenizer), import, the same greedy tokens
  and ids as the run, and `init_from` the import keeps training."""
  flags = tiny_train_flags(tiny_corpus, tmp_path / "data", steps=20,
                           **{"data.tokenizer": tokenizer})
  run_train(tmp_path / "run", flags)
  report = export_checkpoint(tmp_path / "run", tmp_path / "hf", progress=False)
  assert report["tokenizer"] == tokenizer
  _import(tmp_path / "hf", tmp_path / "back")
  run, back = restore(tmp_path / "run"), restore(tmp_path / "back")
  ours, theirs = tokenizer_of(run.config), tokenizer_of(back.config)
  texts = json.loads((FIXTURES / "sentencepiece" / "texts.json").read_text())["texts"]
  for text in texts:
    np.testing.assert_array_equal(theirs.encode(text), ours.encode(text))
  prompts = [ours.encode(t)[:8] for t in texts[:2]]
  greedy = [generate(w.model, w.params, prompts, 8, Sampling(temperature=0.0), None)
            for w in (run, back)]
  np.testing.assert_array_equal(np.stack(greedy[0]), np.stack(greedy[1]))
  run_train(tmp_path / "more", [
      "--config=configs/finetune.py", f"--config.init_from={tmp_path / 'back'}",
      "--config.steps=2", "--config.batch_size=4", "--config.seq_len=32",
      f"--config.data.data_dir={tmp_path / 'data'}",
  ])
  summary = json.loads((tmp_path / "more" / "summary.json").read_text())
  assert summary["status"] == "completed" and np.isfinite(summary["final_eval_loss"])


def test_rope_scaling_fields_in_either_spelling():
  """Llama 3.1's and Qwen2.5's configs as they ship (the older `rope_scaling` spelling) map to
  model.rope.scaling, and export writes them back in transformers' `rope_parameters`."""
  llama31 = json.loads((FIXTURES / "llama3" / "config.json").read_text())
  del llama31["rope_parameters"]
  llama31.update(rope_theta=500000.0, max_position_embeddings=131072, rope_scaling={
      "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192, "rope_type": "llama3"})
  section = model_section(llama31)
  assert section["rope"] == {"base": 500000.0, "scaling": {
      "type": "llama3", "factor": 8.0, "original_max_position": 8192, "low_freq_factor": 1.0,
      "high_freq_factor": 4.0}}
  qwen25 = json.loads((FIXTURES / "qwen2_yarn" / "config.json").read_text())
  del qwen25["rope_parameters"]
  qwen25.update(rope_theta=1e6, max_position_embeddings=32768,
                rope_scaling={"type": "yarn", "factor": 4.0})
  scaling = model_section(qwen25)["rope"]["scaling"]
  assert scaling == {"type": "yarn", "factor": 4.0, "original_max_position": 32768}
  config = get_config()
  config.model.rope.scaling.update(scaling)
  written = hf_config(config, 1, 2, "float32")
  assert written["rope_parameters"] == {
      "rope_type": "yarn", "rope_theta": 10_000.0, "factor": 4.0,
      "original_max_position_embeddings": 32768, "beta_fast": 32.0, "beta_slow": 1.0,
      "truncate": True}
  assert written["max_position_embeddings"] == 4 * 32768
