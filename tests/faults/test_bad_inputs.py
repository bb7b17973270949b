"""Every command line answers a bad value, a missing path or a bad combination with one line:
`error: ...` naming the field, a non-zero exit status and no traceback.

The cases run in forked children of one process that imported the libraries once
(tests/faults/cli_driver.py), so the table of commands takes seconds.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, tiny_train_flags


def _cases(tmp, corpus, data_dir, trained) -> list[tuple[list[str], str]]:
  """(argv, what the error line must name)."""
  tiny = tiny_train_flags(corpus, data_dir)
  train = lambda *flags: ["train.py", f"--workdir={tmp / 'w'}", *tiny, *flags]
  config_values = [
      ("optimizer.lr=-1", "optimizer.lr"), ("optimizer.b1=2.0", "optimizer.b1"),
      ("optimizer.b2=1.0", "optimizer.b2"), ("optimizer.eps=0", "optimizer.eps"),
      ("optimizer.grad_clip=-1", "optimizer.grad_clip"),
      ("optimizer.warmup_steps=-10", "optimizer.warmup_steps"),
      ("optimizer.weight_decay=-1", "optimizer.weight_decay"),
      ("optimizer.min_lr_ratio=2", "optimizer.min_lr_ratio"),
      ("optimizer.name=sgdd", "optimizer.name"),
      ("optimizer.schedule=linear", "optimizer.schedule"),
      ("target_loss=-1", "target_loss"), ("seed=-1", "seed"), ("steps=0", "steps"),
      ("batch_size=-4", "batch_size"), ("seq_len=0", "seq_len"), ("eval_every=0", "eval_every"),
      ("keep_checkpoints=0", "keep_checkpoints"), ("log_every=-1", "log_every"),
      ("on_nonfinite=ignore", "on_nonfinite"), ("max_nonfinite_skips=-1", "max_nonfinite_skips"),
      ("model.attention=flash", "model.attention"), ("model.position=xyz", "model.position"),
      ("model.num_kv_heads=3", "model.num_kv_heads"), ("model.d_model=31", "model.d_model"),
      ("model.dtype=float16", "model.dtype"), ("model.remat=some", "model.remat"),
      ("model.norm_eps=0", "model.norm_eps"), ("model.init_std=-0.1", "model.init_std"),
      ("model.moe.num_experts=-1", "model.moe.num_experts"),
      ("model.rope.base=0", "model.rope.base"), ("model.scan_unroll=0", "model.scan_unroll"),
      ("model.rope.scaling.type=ntk", "model.rope.scaling.type"),
      ("model.rope.scaling.type=llama3", "model.rope.scaling.original_max_position"),
      ("model.loss_chunk=-8", "model.loss_chunk"),
      ("quant.mode=int2", "quant.mode"), ("quant.group_size=-1", "quant.group_size"),
      ("quant.embedding=int2", "quant.embedding"),
      ("data.tokenizer=wordpiece", "data.tokenizer"), ("data.filters=length,bogus", "data.filters"),
      ("data.validation_percent=0", "data.validation_percent"),
      ("data.curriculum.difficulty=hard", "data.curriculum.difficulty"),
      ("data.seq_len_warmup.start=1000", "data.seq_len_warmup.start"),
      ("data.worker_threads=-1", "data.worker_threads"),
      ("data.max_doc_bytes=0", "data.max_doc_bytes"),
      ("data.shuffle_window=0", "data.shuffle_window"),
      ("data.filter.near_dup_threshold=0", "data.filter.near_dup_threshold"),
      ("data.filter.max_tokens=0", "data.filter.max_tokens"),
      ("data.name=text", "data.text_glob"), ("data.tokenizer=hf", "data.tokenizer_dir"),
      ("data.corpus_root=/nonexistent/corpus", "data.corpus_root"),
      ("steps=abc", "steps"), ("profile.start_step=-1", "profile.start_step"),
      ("nosuchfield=1", "nosuchfield"), ("model.nosuch=1", "nosuch"),
  ]
  cases = [(train(f"--config.{value}"), field) for value, field in config_values]
  moe = lambda *flags: train("--config.model.moe.num_experts=4", *flags)
  cases += [
      (train("--config.profile.steps=5", "--config.profile.start_step=39"), "profile.start_step"),
      (train("--config.profile.steps=2", "--config.profile.start_step=0"), "profile.start_step"),
      (moe("--config.model.moe.dispatch=sorted"), "model.moe.dispatch"),
      (moe("--config.model.moe.router=sigmoid"), "model.moe.router"),
      (moe("--config.model.moe.bias_rate=-1"), "model.moe.bias_rate"),
      (moe("--config.quant.mode=int8"), "model.moe.dispatch"),
  ]
  (tmp / "a_file").write_text("not a directory")
  for kind, content in (("empty", b"  \n"), ("binary", b"\0" * 100_000)):
    (tmp / kind).mkdir()
    for i in range(8):
      (tmp / kind / f"f{i}.txt").write_bytes(content)
  text_corpus = lambda kind, tokenizer: train(
      "--config.data.name=text", f"--config.data.text_glob={tmp / kind}",
      "--config.data.validation_percent=50", f"--config.data.tokenizer={tokenizer}",
      f"--config.data.data_dir={tmp / 'data'}",
  )
  cases += [
      (train("--config.model.loss_chunk=8", f"--config.distill.teacher={tmp / 'w'}"),
       "model.loss_chunk"),
      (text_corpus("empty", "sentencepiece"), "data.text_glob"),
      (text_corpus("binary", "sentencepiece"), "data.text_glob"),
      (text_corpus("binary", "bytes"), "data.name"),
      (["train.py", "--config=configs/finetune.py", f"--workdir={tmp / 'w'}",
        "--config.init_from=/nonexistent/run"], "init_from"),
      (["train.py", "--config=configs/finetune.py", f"--workdir={tmp / 'w'}",
        f"--config.init_from={trained}", "--config.peft.method=adapter"], "peft.method"),
      (["train.py", "--config=configs/finetune.py", f"--workdir={tmp / 'w'}",
        f"--config.init_from={trained}", "--config.peft.rank=0"], "peft.rank"),
      (["train.py", "--config=configs/missing.py", f"--workdir={tmp / 'w'}"], "configs/missing.py"),
      (["train.py", "--workdir=", *tiny], "--workdir"),
      (["train.py", f"--workdir={tmp / 'a_file'}", *tiny], "a_file"),
      (["train.py", f"--workdir={tmp / 'a_file' / 'w'}", *tiny], "a_file"),
      (["train.py", *tiny], "workdir"),
      (["-m", "data.prepare", f"--workdir={tmp / 'p'}", "--config.nosuchfield=1"], "nosuchfield"),
      (["-m", "data.prepare", f"--workdir={tmp / 'p'}", "--config=configs/missing.py"],
       "configs/missing.py"),
      (["-m", "data.prepare", f"--workdir={tmp / 'p'}", "--config.data.filters=bogus"],
       "data.filters"),
      (["-m", "data.prepare"], "workdir"),
  ]
  cases += _corpus_cases(tmp, train)
  (tmp / "no_get_sweep.py").write_text("SWEEP = {}\n")
  (tmp / "bad_points.py").write_text(
      "def get_sweep():\n  return {'base': 'configs/default.py', "
      "'grid': {'optimizer.lr': [1e-3, -1.0]}}\n"
  )
  (tmp / "bad_field.py").write_text(
      "def get_sweep():\n  return {'base': 'configs/default.py', 'points': [{'model.nosuch': 1}]}\n"
  )
  sweep = lambda *flags: ["-m", "evals.sweep", f"--workdir={tmp / 's'}", *flags]
  cases += [
      (sweep("--sweep=configs/sweeps/missing.py"), "--sweep"),
      (sweep(f"--sweep={tmp / 'no_get_sweep.py'}"), "get_sweep"),
      (sweep(f"--sweep={tmp / 'bad_points.py'}", "--dry_run"), "optimizer.lr"),
      (sweep(f"--sweep={tmp / 'bad_field.py'}", "--dry_run"), "model.nosuch"),
      (sweep(f"--sweep={tmp / 'bad_points.py'}", "--parallel=0"), "--parallel"),
      (["-m", "evals.sweep"], "--sweep"),
  ]
  workdir = f"--workdir={trained}"
  long_text = " ".join(str(i) for i in range(300))  # longer than the test model's context
  (tmp / "long_prompt.txt").write_text(long_text + "\n")
  cases += [
      (["-m", "evals.generate", workdir, "--max_new_tokens=8", f"--prompt={long_text}"],
       "--truncate_prompt"),
      (["-m", "evals.generate", workdir, f"--draft={trained}", "--max_new_tokens=8",
        f"--prompt={long_text}"], "--truncate_prompt"),
      (["-m", "evals.cos", f"--models={trained},{trained}", "--max_new_tokens=8",
        f"--prompts={tmp / 'long_prompt.txt'}"], "--truncate_prompt"),
      (["-m", "evals.cos", f"--models={trained},{trained}", "--engine=host"], "engine"),
      (["-m", "evals.generate", workdir, f"--draft={trained}", "--prompt=x", "--gamma=0"],
       "gamma=0"),
      (["-m", "evals.generate", workdir, f"--draft={trained}", "--prompt=x", "--gamma=fast"],
       "gamma=fast"),
      (["-m", "evals.generate", workdir, f"--draft={trained}", "--prompt=x", "--gamma=2,3"],
       "gamma=2,3"),
      (["-m", "evals.cos", f"--models={trained},{trained}", "--gamma=0,2"], "gamma=0,2"),
      (["-m", "evals.cos", f"--models={trained},{trained}", "--gamma=1,2,3"], "gamma=1,2,3"),
      (["-m", "evals.cos", f"--models={trained},{trained}", "--gamma=auto,3"], "gamma=auto,3"),
      (["-m", "evals.generate", "--workdir=/nonexistent/run", "--prompt=x"], "workdir"),
      (["-m", "evals.generate", f"--workdir={tmp}", "--prompt=x"], "config.json"),
      (["-m", "evals.generate", "--prompt=x"], "workdir"),
      (["-m", "evals.quantize", "--workdir=/nonexistent/run"], "workdir"),
      (["-m", "evals.quantize", workdir, "--bits=3"], "bits"),
      (["-m", "evals.quantize", workdir, "--dtype=int8"], "dtype"),
      (["-m", "evals.quantize", workdir, "--embedding=int2"], "embedding='int2'"),
      (["-m", "evals.generate", workdir, "--prompt=x", "--quant_embedding=int8"],
       "quant_embedding='int8'"),
      (["-m", "evals.efficiency", workdir, "--mode=bogus"], "--mode"),
      (["-m", "evals.efficiency", workdir, "--steps=3", "--profile_steps=5"], "--profile_steps"),
      (["-m", "evals.efficiency", workdir, "--profile_start_step=-1"], "--profile_start_step"),
      (["-m", "evals.efficiency", "--workdir=/nonexistent/run"], "workdir"),
      (["-m", "evals.merge_adapters", workdir], "--out"),
      (["-m", "evals.merge_adapters", "--workdir=/nonexistent/run", f"--out={tmp / 'm'}"],
       "workdir"),
      (["-m", "evals.convert", "--from_hf=/nonexistent/hf", f"--workdir={tmp / 'c'}"], "from_hf"),
      (["-m", "evals.convert", workdir, f"--to_hf={tmp / 'h'}", "--max_shard_gb=0"],
       "max_shard_gb"),
      (["-m", "evals.convert", workdir], "--to_hf"),
      *_bad_hf_folders(tmp),
      (["-m", "evals.cos", f"--models={trained}"], "models"),
      (["-m", "evals.cos", f"--models={trained},{trained}", "--prompts=/nonexistent/prompts.txt"],
       "/nonexistent/prompts.txt"),
      (["-m", "evals.generate", workdir, "--prompt=x", "--max_new_tokens=100000"],
       "max_new_tokens"),
      (["-m", "evals.plot", "/nonexistent/sweep"], "/nonexistent/sweep"),
      (["-m", "evals.plan", "--devices=0"], "--devices"),
      (["-m", "evals.plan", "--config.mesh.fsdp=3", "--devices=8"], "mesh"),
      (["-m", "evals.plan", "--topology=v7z:2x2"], "--topology='v7z:2x2'"),
      (["-m", "evals.plan", "--topology=v5e:2x2x2"], "--topology=v5e:2x2x2"),
      (["-m", "evals.plan", "--topology=h100:3", "--config.mesh.fsdp=2"], "--topology=h100:3"),
      (["-m", "evals.plan", "--config.nosuch=1"], "nosuch"),
  ]
  return cases


def _bad_hf_folders(tmp) -> list[tuple[list[str], str]]:
  """Imports of Hugging Face folders we cannot read: no tokenizer, a sentencepiece model not of
  the checkpoint's vocabulary, a rope scaling or an architecture we do not implement."""
  fixtures = ROOT / "tests" / "fixtures" / "hf"
  cases = []

  def folder(name: str, source: str, config: dict, drop: str = "") -> Path:
    path = tmp / "hf" / name
    shutil.copytree(fixtures / source, path)
    hf = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**hf, **config}))
    if drop:
      (path / drop).unlink()
    return path

  for name, source, config, drop, field in [
      ("no_tokenizer", "qwen2", {}, "tokenizer.json", "tokenizer.model"),
      ("spm_vocab", "sentencepiece", {"vocab_size": 400}, "tokenizer.json", "vocab_size=400"),
      ("rope", "llama3", {"rope_parameters": {"rope_type": "longrope", "factor": 2.0}}, "",
       "rope_type='longrope'"),
      ("act", "qwen2", {"hidden_act": "gelu"}, "", "hidden_act='gelu'"),
      ("window", "qwen2", {"use_sliding_window": True}, "", "use_sliding_window"),
  ]:
    path = folder(name, source, config, drop)
    cases.append((["-m", "evals.convert", f"--from_hf={path}", f"--workdir={tmp / name}"], field))
  return cases

def _corpus_cases(tmp, train) -> list[tuple[list[str], str]]:
  """JSONL and Parquet sources and mixtures."""
  shards = tmp / "shards"
  shards.mkdir()
  good = [json.dumps({"text": f"document {i}", "score": i}) for i in range(1100)]
  (shards / "notes.txt").write_text("plain text\n")
  (shards / "garbage.jsonl").write_bytes(b"\x00\x01 not json\n{{{\n")
  (shards / "fake.parquet").write_text("not parquet")
  (shards / "content.jsonl").write_text(json.dumps({"content": "no text field"}) + "\n")
  (shards / "late.jsonl").write_text("\n".join([*good, json.dumps({"text": 5})]) + "\n")
  records = lambda name, files: train(
      f"--config.data.name={name}", f"--config.data.files={files}",
      f"--config.data.data_dir={tmp / 'data'}",
  )
  mix = lambda *flags: ["train.py", "--config=configs/mixture.py", f"--workdir={tmp / 'w'}",
                        *flags]
  return [
      (train("--config.data.name=jsonl"), "data.files"),
      (records("jsonl", shards / "none" / "*.jsonl"), "data.files"),
      (records("jsonl", shards / "notes.txt"), "notes.txt"),
      (records("jsonl", shards / "garbage.jsonl"), "garbage.jsonl"),
      (records("parquet", shards / "fake.parquet"), "fake.parquet"),
      (records("jsonl", shards / "content.jsonl"), "data.text_field"),
      (records("jsonl", shards / "late.jsonl"), "late.jsonl:1101"),
      (mix("--config.data.mixture.code.weight=-1"), "data.mixture.code.weight"),
      (mix("--config.data.mixture.code.weight=0", "--config.data.mixture.tests.weight=0"),
       "data.mixture"),
      (mix("--config.data.mixture.code.name=bogus", f"--config.data.data_dir={tmp / 'data'}"),
       "data.mixture.code"),
  ]


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_corpus, fault_data_dir, reference_run):
  tmp = tmp_path_factory.mktemp("bad_inputs")
  cases = _cases(tmp, tiny_corpus, fault_data_dir, reference_run)
  proc = subprocess.run(
      [sys.executable, "tests/faults/cli_driver.py"], cwd=ROOT,
      input=json.dumps([argv for argv, _ in cases]), capture_output=True, text=True, timeout=1200,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return list(zip(cases, json.loads(proc.stdout), strict=True))


def test_at_least_sixty_cases(results):
  assert len(results) >= 60


def test_every_bad_input_is_one_line_naming_the_field(results):
  failures = []
  for (argv, field), result in results:
    errors = [line for line in result["stderr"].splitlines() if line.startswith("error:")]
    ok = (
        result["code"] not in (0, None) and "Traceback" not in result["stderr"]
        and len(errors) == 1 and field in errors[0]
    )
    if not ok:
      tail = result["stderr"].strip().splitlines()[-3:]
      failures.append(f"{' '.join(argv[:3])} ... {argv[-1]}: code {result['code']}, {tail}")
  assert not failures, "\n".join(failures)


def test_bad_hf_imports_write_nothing(results):
  """A refused import leaves no workdir behind."""
  for (argv, _), _result in results:
    if argv[:2] == ["-m", "evals.convert"] and argv[2].startswith("--from_hf="):
      assert not Path(argv[3].removeprefix("--workdir=")).exists(), argv
