"""The training loop: config -> mesh -> data -> model -> steps -> workdir.

`train_and_evaluate` builds the run's pieces in that order and hands them to `Loop`, which owns
what changes while the run goes: the state, its progress, the summary and the pending log line.
"""

import dataclasses
import math
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from tqdm import tqdm

from data import mixture
from data.seq_len_warmup import rows_per_step
from efficiency.attention import attention_impl, kv_cache_bytes_per_token
from efficiency.errors import DivergedError
from efficiency.evaluation import pooled
from efficiency.metrics.memory import peak_memory_bytes
from efficiency.metrics.peak import Mfu, Peak, peak_flops_total
from efficiency.metrics.profile import ProfileWindow, classify_hlo, summarize, table
from efficiency.model.flops import flops_per_token
from efficiency.peft import peft_config
from efficiency.sharding.mesh import make_mesh, to_global
from efficiency.train import checkpoint
from efficiency.train.goodput import Clock, account, settle_lost_work
from efficiency.train.inputs import Inputs, load_inputs
from efficiency.train.interrupts import Interrupted, Interrupts
from efficiency.train.measure import step_temp_bytes
from efficiency.train.setup import Training
from efficiency.train.source_tokens import SourceTokens
from efficiency.train.state import TrainState
from efficiency.workdir import files
from efficiency.workdir.lock import WorkdirLock
from efficiency.workdir.restore import load_teacher, restore
from efficiency.workdir.resume import check_resume, fill_shards
from efficiency.workdir.storage import as_storage_error, remove_partial_saves
from efficiency.workdir.summary import Summary
from efficiency.workdir.wandb_writer import WandbWriter
from efficiency.workdir.writer import MetricWriter


class Throughput:
  """Real tokens/s, MFU and data wait, over log intervals and over the whole run.

  Steps that waited on warm-up (a process's first step, and the first step in each new batch
  shape) are left out of the run totals. MFU counts each step's model FLOPs
  (`model_step_flops`: every position computed, padding included, at that step's row length),
  against `mfu`'s peak (never above 1: see `efficiency.metrics.peak.Mfu`).
  """

  def __init__(self, mfu: Mfu):
    self.mfu = mfu
    self.run_time = self.run_wait = 0.0
    self.run_tokens = self.run_steps = self.run_flops = 0
    self.reset_interval()

  def reset_interval(self) -> None:
    self.interval_start = time.perf_counter()
    self.interval_tokens = self.interval_steps = self.interval_flops = 0

  def add_step(
      self, tokens: int, flops: int, step_time: float, wait_time: float, warm: bool
  ) -> None:
    self.interval_tokens += tokens
    self.interval_flops += flops
    self.interval_steps += 1
    if warm:
      self.run_tokens += tokens
      self.run_flops += flops
      self.run_steps += 1
      self.run_time += step_time
      self.run_wait += wait_time

  def interval(self) -> dict[str, float]:
    elapsed = max(time.perf_counter() - self.interval_start, 1e-9)
    steps = max(self.interval_steps, 1)
    return {
        "tokens_per_sec": self.interval_tokens / elapsed,
        "mfu": self.mfu(self.interval_flops, elapsed),
        "step_time_s": elapsed / steps,
    }

  def run(self) -> dict[str, float | None]:
    if not self.run_steps:
      return {"tokens_per_sec": None, "mfu": None, "data_wait_fraction": None}
    return {
        "tokens_per_sec": self.run_tokens / self.run_time,
        "mfu": self.mfu(self.run_flops, self.run_time),
        "data_wait_fraction": self.run_wait / self.run_time,
    }


@dataclasses.dataclass
class Progress:
  """What a checkpoint records besides the train state (saved as JSON with it)."""

  tokens_seen: int = 0
  tokens_to_target: int | None = None
  flops_seen: int = 0  # model FLOPs of the steps so far (each at its own row length)
  flops_to_target: int | None = None
  train_time_s: float = 0.0  # time in train steps (data wait included; compiles, evals, saves not)
  time_to_target_s: float | None = None
  final_eval_loss: float | None = None
  final_eval_bpb: float | None = None
  eval_step: int | None = None  # the step final_eval_loss was measured at
  tokens_per_source: dict | None = None  # a mixture's tokens_seen by source label


def model_step_flops(config: ml_collections.ConfigDict, seq_len: int) -> int:
  """Model FLOPs of one train step in rows of `seq_len` (shorter than `config.seq_len` in a
  warmup bucket: attention spans the short row), as many rows as `rows_per_step` gives."""
  return flops_per_token(config.model, seq_len) * rows_per_step(config, seq_len) * seq_len


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | Path, launched_at: float | None = None
) -> dict:
  """Trains a resolved `config` in `workdir`, resuming from its newest checkpoint that restores;
  returns the summary (a rerun of a finished run returns its summary and trains nothing).
  `launched_at` (epoch seconds, default now) starts this launch's goodput account: train.py
  gives its process's start, so imports count as start-up.

  Holds the workdir's lock for the whole run. Raises `Interrupted` on SIGINT/SIGTERM (after
  saving, with the committed step), DivergedError on a non-finite loss (the finite checkpoints
  kept), StorageError when the workdir cannot be written (the committed checkpoints kept); each
  leaves summary.json with the run's status.
  """
  started = time.perf_counter()
  clock = Clock(time.time() if launched_at is None else launched_at)
  workdir = files.make_workdir(workdir)
  is_main = jax.process_index() == 0
  with WorkdirLock(workdir, enabled=is_main), Interrupts() as interrupts:
    try:
      return _train(config, workdir, interrupts, started, clock)
    except Interrupted as e:
      if e.step is None:  # stopped before the loop: the newest checkpoint is what is safe
        steps = files.checkpoint_steps(workdir)
        e.step = steps[-1] if steps else None
        _set_status(workdir, "interrupted", is_main, clock.started)
      raise
    except Exception as e:
      error = as_storage_error(e, workdir)
      if error is None:
        raise
      if is_main:
        remove_partial_saves(workdir)
      _set_status(workdir, "failed", is_main, clock.started)
      raise error from e


def _set_status(workdir: Path, status: str, is_main: bool, launched: float) -> None:
  """Sets summary.json's status (writing a new summary if there is none), and that of this
  launch's record (the one started at `launched`) if it wrote one, if it can."""
  if not is_main:
    return
  try:
    summary = files.read_json(workdir / files.SUMMARY) or dataclasses.asdict(Summary())
    summary["status"] = status
    launches = summary.get("launches") or []
    if launches and launches[-1]["start"] == launched and launches[-1]["ended"] == "running":
      launches[-1]["ended"] = status
    files.write_json_atomic(workdir / files.SUMMARY, summary)
  except (OSError, ValueError):
    pass


def _train(
    config: ml_collections.ConfigDict, workdir: Path, interrupts: Interrupts, started: float,
    clock: Clock,
) -> dict:
  is_main = jax.process_index() == 0
  config = ml_collections.ConfigDict(config.to_dict())
  fill_shards(config, workdir, jax.process_count())
  check_resume(config, workdir)
  mesh = make_mesh(config.mesh)
  clock.charge("startup")
  inputs = load_inputs(config, jax.process_index(), jax.process_count())
  clock.charge("data_prep")
  training = Training(config, mesh, teacher=load_teacher(config))

  tracker = WandbWriter(workdir, config) if is_main and config.get("log", {}).get("wandb") else None
  writer = MetricWriter(workdir, enabled=is_main, tracker=tracker)
  if is_main:
    files.write_json_atomic(workdir / files.CONFIG, config.to_dict())
    files.write_json_atomic(workdir / files.DATA_REPORT, inputs.prepared.report)
  manager = checkpoint.make_manager(workdir, config.keep_checkpoints)
  restored = checkpoint.restore_latest(manager, training.abstract_state, inputs.train)
  if restored is None:
    init_from = config.get("init_from", "")
    state = training.init(config.seed, restore(init_from).params if init_from else None)
    progress = Progress()
    writer.drop_after(-1)  # records of an attempt that saved no checkpoint
  else:
    state, progress = restored[0], Progress(**restored[1])
    logging.info("Resumed from step %d in %s", int(state.step), workdir)
    writer.drop_after(int(state.step))
    finished = _finished_summary(workdir, int(state.step), config.steps)
    if finished is not None:
      manager.close()
      writer.close()
      return finished

  step = int(jax.device_get(state.step))
  previous = files.read_json(workdir / files.SUMMARY).get("launches") or []
  clock.start_step = clock.step = step
  clock.charge("startup")
  compiled_step, compile_time_s = training.compile(inputs.eval_batches[0])
  clock.charge("compile")
  summary = _start_summary(config, training, progress, step)
  summary.compile_time_s = compile_time_s
  summary.step_temp_bytes = step_temp_bytes(compiled_step)
  summary.resumed_from_step = None if restored is None else summary.steps
  profile = _profile_window(config, workdir, step, summary)
  loop = Loop(config, training, compiled_step, inputs, writer, manager, summary, progress, started,
              clock, settle_lost_work(previous, step), profile)
  try:
    loop.run(state, interrupts)
  finally:
    writer.close()
    manager.close()
  return dataclasses.asdict(summary)


def _profile_window(
    config: ml_collections.ConfigDict, workdir: Path, step: int, summary: Summary
) -> ProfileWindow:
  """The run's profile window (`config.profile`), or an empty one when the run has none, when a
  launch already captured it (its profile_summary.json is there: its top group goes into the
  summary) or when a resume at `step` is past its start."""
  window = config.get("profile") or ml_collections.ConfigDict({"start_step": 1, "steps": 0})
  done = files.read_json(workdir / files.PROFILE_SUMMARY)
  if done:
    summary.top_op_group, summary.top_op_group_share = done["top_group"], done["top_group_share"]
  wanted = {"start_step": window.start_step, "steps": window.steps}
  profile = ProfileWindow(workdir / files.TENSORBOARD, window.start_step, window.steps)
  if done.get("window") == wanted:
    profile.steps = 0
  elif window.steps and profile.first_traced <= step:
    logging.warning("Resumed at step %d, past profile.start_step=%d: no profile this launch.",
                    step, window.start_step)
    profile.steps = 0
  return profile


def _finished_summary(workdir: Path, step: int, total_steps: int) -> dict | None:
  """The summary of a run that already reached its last step, so a rerun does not redo it."""
  summary = files.read_json(workdir / files.SUMMARY)
  if step < total_steps or summary.get("status") != "completed":
    return None
  logging.info("%s already finished %d steps; nothing to do.", workdir, step)
  return summary


def _start_summary(
    config: ml_collections.ConfigDict, training: Training, progress: Progress, step: int
) -> Summary:
  """The summary as the run (re)starts at `step`: its size, its mesh and where it is."""
  peak = peak_flops_total(config.model.dtype)
  return Summary(
      status="running",
      steps=step,
      tokens_seen=progress.tokens_seen,
      target_loss=config.target_loss,
      tokens_to_target=progress.tokens_to_target,
      flops_seen=progress.flops_seen,
      flops_to_target=progress.flops_to_target,
      time_to_target_s=progress.time_to_target_s,
      final_eval_loss=progress.final_eval_loss,
      final_eval_bpb=progress.final_eval_bpb,
      tokens_per_source=progress.tokens_per_source,
      flops_per_token=flops_per_token(config.model, config.seq_len),
      kv_cache_bytes_per_token=kv_cache_bytes_per_token(config.model),
      attention_impl=attention_impl(config),
      peak_flops=peak.flops,
      peak_flops_source=peak.source,
      peak_flops_key=peak.key,
      peak_flops_measurement=peak.details,
      param_count=training.param_count(),
      trainable_param_count=training.trainable_param_count(),
      optimizer_state_bytes=training.optimizer_state_bytes(),
      peft_method=peft_config(config).method,
      init_from=config.get("init_from", "") or None,
      mesh=dict(training.mesh.shape),
      devices=jax.device_count(),
      device_kind=jax.devices()[0].device_kind,
      process_count=jax.process_count(),
  )


class Loop:
  """The steps of one run from the state's step to `config.steps`: train, log (one step late,
  so reading metrics never waits on the device), evaluate, save.

  Between steps it acts on a signal (save, wait until committed, end as `interrupted`). Before
  every save and at every log line it checks that the loss and gradient norm are finite (with
  `on_nonfinite=skip`, that no more than `max_nonfinite_skips` steps in a row were skipped);
  otherwise it ends as `diverged` and saves nothing more.
  """

  def __init__(
      self,
      config: ml_collections.ConfigDict,
      training: Training,
      compiled_step: jax.stages.Compiled,
      inputs: Inputs,
      writer: MetricWriter,
      manager: ocp.CheckpointManager,
      summary: Summary,
      progress: Progress,
      started: float,
      clock: Clock,
      previous_launches: list[dict],
      profile: ProfileWindow,
  ):
    self.config, self.training = config, training
    self.train_iterator = inputs.train
    self.eval_batches = [to_global(b, training.rows_sharding) for b in inputs.eval_batches]
    self.token_bytes_V = np.asarray(inputs.tokenizer.token_bytes, np.float32)
    self.evaluate_state = training.evaluator(self.token_bytes_V)
    self.source_tokens = self.eval_sources = None
    if mixture.is_mixture(config):
      self.source_tokens = SourceTokens(mixture.labels(config), progress.tokens_per_source)
      self.host_eval_sources = inputs.eval_sources
      self.eval_sources, start = {}, 0  # the eval batches again, by source (same arrays)
      for label, batches in inputs.eval_sources.items():
        self.eval_sources[label] = self.eval_batches[start : start + len(batches)]
        start += len(batches)
    self.writer, self.manager = writer, manager
    self.summary, self.progress, self.started = summary, progress, started
    self.clock, self.previous_launches, self.profile = clock, previous_launches, profile
    self.is_main = jax.process_index() == 0
    peak = Peak(summary.peak_flops, summary.peak_flops_source, summary.peak_flops_key,
                summary.peak_flops_measurement)
    self.mfu = Mfu(peak, remeasure=lambda: peak_flops_total(config.model.dtype, refresh=True))
    self.throughput = Throughput(self.mfu)
    self.compiled_steps = {config.seq_len: compiled_step}  # by row length (warmup buckets)
    self.pending = None  # (step, device metrics, unread counts): read after the next dispatch
    self.unread_tokens = []  # each step's global token count, on device until read
    self.bar = None  # the progress bar, while `run` runs

  def run(self, state: TrainState, interrupts: Interrupts) -> None:
    """Trains to the last step, a signal or a divergence; writes the final summary. Raises
    Interrupted (after the checkpoint of the step it stopped at is committed), DivergedError or
    the error that stopped a save."""
    config = self.config
    start_step = self.summary.steps
    self.bar = tqdm(
        total=config.steps, initial=start_step, desc="train", unit="step",
        disable=not self.is_main, dynamic_ncols=True, mininterval=1.0,
    )
    interrupts.defer()
    step = start_step
    self.clock.charge("startup")
    try:
      if self.needs_eval(start_step):
        self.evaluate(state, start_step)
        self.clock.charge("eval")
      self.throughput.reset_interval()
      while step < config.steps:
        step += 1
        state = self.step(state, step, warm=step > start_step + 1)
        self.bar.update(1)
        if self.evaluates(step) or self.saves(step):
          self.throughput.reset_interval()
        if interrupts.stops_after(step):
          break
      if self.pending is not None:
        self.log_pending()
      self.clock.charge("train_steps")
    except DivergedError as e:
      self.clock.charge("train_steps")
      self.end("diverged", step, self._committed())
      raise DivergedError(f"{e}; newest finite checkpoint: {self._safe_step()}") from None
    finally:
      self.bar.close()
      self.profile.end()
    if step < config.steps:  # stopped on a signal
      logging.warning("Stopping at step %d; saving a checkpoint.", step)
      checkpoint.save(self.manager, state, self.train_iterator, self.checkpoint_progress(),
                      force=True)
      self.clock.saved(step)
    committed = self._committed()
    if step < config.steps:
      self.end("interrupted", step, committed)
      raise Interrupted(interrupts.signum, committed)
    self.end("completed", step, committed)

  def _committed(self) -> int | None:
    """Waits for pending saves; the newest committed step."""
    committed = checkpoint.committed_step(self.manager)
    self.clock.charge("checkpoint")
    return committed

  def _safe_step(self) -> str:
    step = self.manager.latest_step()
    return "none" if step is None else f"step {step}"

  def needs_eval(self, step: int) -> bool:
    """At the start: no eval yet, or the checkpoint's eval is not of the step it saved."""
    progress = self.progress
    if progress.final_eval_loss is None:
      return True
    stale = progress.eval_step is not None and progress.eval_step != step
    return step > 0 and self.evaluates(step) and stale

  def evaluates(self, step: int) -> bool:
    return step % self.config.eval_every == 0 or step == self.config.steps

  def saves(self, step: int) -> bool:
    return step % self.config.checkpoint_every == 0 or step == self.config.steps

  def step(self, state: TrainState, step: int, warm: bool) -> TrainState:
    """Runs train step `step`, then whatever logging, evaluation and saving it calls for."""
    config = self.config
    t0 = time.perf_counter()
    local_batch = next(self.train_iterator)
    self.clock.charge("data_wait")
    if self.source_tokens is not None:
      local_batch = self.source_tokens.take(local_batch)  # counts and removes `sources`
    batch = to_global(local_batch, self.training.rows_sharding)
    seq_len = local_batch["inputs"].shape[1]
    compile_s = 0.0
    if seq_len not in self.compiled_steps:  # a warmup bucket's first step
      self.compiled_steps[seq_len], compile_s = self.training.compile(local_batch, seq_len)
      self.clock.charge("compile")
      self.summary.compile_time_s += compile_s
      self.throughput.interval_start += compile_s  # log-interval rates leave compiles out too
      warm = False
    profile_s = 0.0
    if step == self.profile.first_traced and self.profile.steps:
      self.profile.begin()
      profile_s = self.clock.charge("profile")
    t1 = time.perf_counter()
    with self.profile.annotate(step):
      state, metrics = self.compiled_steps[seq_len](state, batch, *self.training.step_extras)
      if self.profile.traces(step):  # the annotation spans the step's device work
        jax.block_until_ready(state)
    if self.pending is not None:
      self.log_pending()  # reads the previous step's metrics while this step runs
    tokens = int(local_batch["weights"].sum()) * jax.process_count()  # for rates only
    self.unread_tokens.append(metrics["tokens"])
    if step % config.log_every == 0 or step == config.steps:
      self.pending = (step, metrics, len(self.unread_tokens))
    if self.evaluates(step) or self.saves(step):
      # Steps still queued on the device count as training time, not eval or save time.
      jax.block_until_ready(state)
    flops = model_step_flops(config, seq_len)
    self.progress.flops_seen += flops
    step_time = time.perf_counter() - t0 - compile_s - profile_s
    self.progress.train_time_s += step_time
    self.throughput.add_step(tokens, flops, step_time, t1 - t0 - compile_s - profile_s, warm=warm)
    if self.evaluates(step) or self.saves(step):
      if self.pending is not None:
        self.log_pending()
      self.read_tokens()
      self.check_finite(step, jax.device_get(metrics))  # before anything is saved
    self.clock.charge("train_steps")
    self.clock.step = step
    if step == self.profile.last and self.profile.steps:
      self.write_profile()
      self.throughput.reset_interval()
    if self.evaluates(step):
      self.evaluate(state, step)
      self.clock.charge("eval")
    if self.saves(step):
      checkpoint.save(self.manager, state, self.train_iterator, self.checkpoint_progress())
      self.clock.saved(step)
      self.clock.charge("checkpoint")
      self.write_summary()
    return state

  def write_profile(self) -> None:
    """Ends the profile window's trace; writes profile_summary.json and prints its table."""
    path = self.profile.end()
    if self.is_main and path is not None:
      groups = classify_hlo(c.as_text() for c in self.compiled_steps.values())
      result = summarize(path, groups, step_name=self.profile.name)
      result["window"] = {"start_step": self.profile.start, "steps": self.profile.steps}
      files.write_json_atomic(self.writer.workdir / files.PROFILE_SUMMARY, result)
      self.summary.top_op_group = result["top_group"]
      self.summary.top_op_group_share = result["top_group_share"]
      tqdm.write(table(result))
    self.clock.charge("profile")

  def write_summary(self, ended: str = "running", charge: str | None = None) -> None:
    """Writes summary.json with the goodput account up to now (the time since its last charge
    charged to `charge`, if given; this launch `ended`)."""
    if charge is not None:
      self.clock.charge(charge)
    launches = [*self.previous_launches, self.clock.record(ended)]
    result = account(launches)
    self.summary.launches = launches
    self.summary.time_breakdown = result["time_breakdown"]
    self.summary.goodput = result["goodput"]
    self.writer.write_summary(dataclasses.asdict(self.summary))

  def check_finite(self, step: int, metrics: dict) -> None:
    """Raises DivergedError if step `step`'s metrics show a divergence."""
    if self.config.on_nonfinite == "skip":
      skipped = int(metrics.get("consecutive_skips", 0))
      if skipped > self.config.max_nonfinite_skips:
        raise DivergedError(
            f"training diverged: {skipped} steps in a row up to step {step} had a non-finite "
            f"loss or gradient (max_nonfinite_skips={self.config.max_nonfinite_skips})"
        )
      return
    for name in ("loss", "grad_norm"):
      value = float(metrics[name])
      if not math.isfinite(value):
        raise DivergedError(f"training diverged: {name} is {value} at step {step}")

  def read_tokens(self, count: int | None = None) -> int:
    """Adds the first `count` (default: all) unread steps' token counts to `tokens_seen`; returns
    it. The counts are the global batches' real targets, summed on device in each step."""
    count = len(self.unread_tokens) if count is None else count
    read, self.unread_tokens = self.unread_tokens[:count], self.unread_tokens[count:]
    self.progress.tokens_seen += int(sum(float(t) for t in jax.device_get(read)))
    return self.progress.tokens_seen

  def checkpoint_progress(self) -> dict:
    self.read_tokens()
    if self.source_tokens is not None:
      self.progress.tokens_per_source = self.source_tokens.read()
    return dataclasses.asdict(self.progress)

  def log_pending(self) -> None:
    """Writes the pending step's metrics (a log line, TensorBoard, the progress bar), then checks
    them for a divergence."""
    step, metrics, counts = self.pending
    self.pending = None
    tokens_seen = self.read_tokens(counts)
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items() if k != "tokens"}
    rates = self.throughput.interval()
    self.record_peak()
    self.summary.moe_load_max = metrics.get("moe_load_max")
    self.writer.write(step, {"tokens_seen": tokens_seen, **metrics, **rates})
    self.bar.set_postfix(
        loss=f"{metrics['loss']:.3f}", tok_s=f"{rates['tokens_per_sec']:,.0f}", refresh=False
    )
    self.throughput.reset_interval()
    # Reading the metrics waited for the steps queued on the device: their time, recorded now.
    self.write_summary(charge="train_steps")
    self.check_finite(step, metrics)

  def record_peak(self) -> None:
    """Puts the MFU denominator (re-measured if an MFU above 1 showed it wrong) and why an MFU
    was left out into the summary."""
    peak, summary = self.mfu.peak, self.summary
    summary.peak_flops, summary.peak_flops_source = peak.flops, peak.source
    summary.peak_flops_key, summary.peak_flops_measurement = peak.key, peak.details
    summary.mfu_note = self.mfu.note

  def evaluate(self, state: TrainState, step: int) -> None:
    """Eval loss and bits per byte on the fixed eval batches, into metrics and the summary."""
    per_source = {}
    if self.eval_sources is None:
      result = self.evaluate_state(state, self.eval_batches)
    else:  # a mixture: each source alone, and all of them pooled
      results = {label: self.evaluate_state(state, b) for label, b in self.eval_sources.items()}
      result = pooled(results, self.host_eval_sources, self.token_bytes_V)
      self.summary.tokens_per_source = self.source_tokens.read()
      self.summary.eval_loss_per_source = {k: r["eval_loss"] for k, r in results.items()}
      self.summary.eval_bpb_per_source = {k: r["eval_bpb"] for k, r in results.items()}
      per_source = {k: getattr(self.summary, k) for k in (
          "tokens_per_source", "eval_loss_per_source", "eval_bpb_per_source")}
    eval_loss, eval_bpb = result["eval_loss"], result["eval_bpb"]
    self.writer.write(step, {
        "tokens_seen": self.progress.tokens_seen, "flops_seen": self.progress.flops_seen,
        "train_time_s": self.progress.train_time_s, "eval_loss": eval_loss, "eval_bpb": eval_bpb,
        **per_source,
    })
    if not math.isfinite(eval_loss):
      raise DivergedError(f"training diverged: eval_loss is {eval_loss} at step {step}")
    progress, summary = self.progress, self.summary
    progress.final_eval_loss, progress.final_eval_bpb = eval_loss, eval_bpb
    progress.eval_step = step
    if progress.tokens_to_target is None and eval_loss <= self.config.target_loss:
      progress.tokens_to_target = progress.tokens_seen
      progress.flops_to_target = progress.flops_seen
      progress.time_to_target_s = progress.train_time_s
    summary.steps = step
    summary.tokens_seen = progress.tokens_seen
    summary.tokens_to_target = progress.tokens_to_target
    summary.flops_seen = progress.flops_seen
    summary.flops_to_target = progress.flops_to_target
    summary.time_to_target_s = progress.time_to_target_s
    summary.final_eval_loss, summary.final_eval_bpb = eval_loss, eval_bpb
    summary.wall_time_s = time.perf_counter() - self.started
    self.write_summary(charge="eval")
    if self.is_main:
      tqdm.write(
          f"step {step}: eval_loss {eval_loss:.4f}  bpb {eval_bpb:.4f}  "
          f"tokens_seen {progress.tokens_seen:,}"
      )

  def end(self, status: str, step: int, committed: int | None) -> None:
    """The final summary: run-wide rates, the status, the step reached and the newest committed
    checkpoint, peak memory."""
    summary = self.summary
    for key, value in self.throughput.run().items():
      setattr(summary, key, value)
    self.record_peak()
    summary.status = status
    summary.steps = step
    summary.checkpoint_step = committed
    summary.tokens_seen = self.read_tokens()
    if self.source_tokens is not None:
      summary.tokens_per_source = self.source_tokens.read()
    summary.flops_seen = self.progress.flops_seen
    summary.peak_memory_bytes, summary.peak_memory_source = peak_memory_bytes()
    summary.wall_time_s = time.perf_counter() - self.started
    self.clock.step = step
    self.clock.charge("checkpoint")  # the final save's wait, just before
    self.write_summary(ended=status)
