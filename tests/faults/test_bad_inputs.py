"""Every command line answers a bad value, a missing path or a bad combination with one line:
`error: ...` naming the field, a non-zero exit status and no traceback.

The cases run in forked children of one process that imported the libraries once
(tests/faults/cli_driver.py), so the table of commands takes seconds.
"""

import json
import subprocess
import sys

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
      ("steps=abc", "steps"),
      ("nosuchfield=1", "nosuchfield"), ("model.nosuch=1", "nosuch"),
  ]
  cases = [(train(f"--config.{value}"), field) for value, field in config_values]
  moe = lambda *flags: train("--config.model.moe.num_experts=4", *flags)
  cases += [
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
  cases += [
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
      (["-m", "evals.efficiency", "--workdir=/nonexistent/run"], "workdir"),
      (["-m", "evals.merge_adapters", workdir], "--out"),
      (["-m", "evals.merge_adapters", "--workdir=/nonexistent/run", f"--out={tmp / 'm'}"],
       "workdir"),
      (["-m", "evals.convert", "--from_hf=/nonexistent/hf", f"--workdir={tmp / 'c'}"], "from_hf"),
      (["-m", "evals.convert", workdir, f"--to_hf={tmp / 'h'}", "--max_shard_gb=0"],
       "max_shard_gb"),
      (["-m", "evals.convert", workdir], "--to_hf"),
      (["-m", "evals.cos", f"--models={trained}"], "models"),
      (["-m", "evals.cos", f"--models={trained},{trained}", "--prompts=/nonexistent/prompts.txt"],
       "/nonexistent/prompts.txt"),
      (["-m", "evals.generate", workdir, "--prompt=x", "--max_new_tokens=100000"],
       "max_new_tokens"),
      (["-m", "evals.plot", "/nonexistent/sweep"], "/nonexistent/sweep"),
      (["-m", "evals.plan", "--devices=0"], "--devices"),
      (["-m", "evals.plan", "--config.mesh.fsdp=3", "--devices=8"], "mesh"),
      (["-m", "evals.plan", "--config.nosuch=1"], "nosuch"),
  ]
  return cases


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
