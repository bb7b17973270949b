"""The training loop: mesh, data, model and optimizer in; checkpoints, metrics and summary out."""

import json
import math
import signal
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from data.pipeline import make_eval_batches, make_train_iterator
from data.prepared import prepare
from data.tokenizer import get_tokenizer
from efficiency.attention import kv_cache_bytes_per_token
from efficiency.config import ConfigError
from efficiency.metrics.memory import peak_memory_bytes
from efficiency.metrics.peak import peak_flops_total
from efficiency.metrics.writer import MetricWriter, write_json_atomic
from efficiency.model.flops import flops_per_token
from efficiency.peft import peft_config
from efficiency.sharding.mesh import make_mesh, to_global
from efficiency.sharding.rules import LOGICAL_AXIS_RULES
from efficiency.train import checkpoint
from efficiency.train.restore import load_params
from efficiency.train.setup import Training, lower_and_compile


class StopOnSigterm:
  """Turns SIGTERM into a flag the loop checks, so a preempted job checkpoints before exiting."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # signals can only be set from the main thread
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class Throughput:
  """Real tokens/s, MFU and data wait, over log intervals and over the whole run.

  The first step of a process waits on warm-up and is left out of the run totals. MFU counts
  every position computed (padding included) at `flops_per_token`.
  """

  def __init__(self, flops_per_token: float, peak_flops: float, positions_per_step: int):
    self.flops_per_token = flops_per_token
    self.peak_flops = peak_flops
    self.positions_per_step = positions_per_step
    self.run_time = self.run_wait = 0.0
    self.run_tokens = self.run_steps = 0
    self.reset_interval()

  def reset_interval(self) -> None:
    self.interval_start = time.perf_counter()
    self.interval_tokens = self.interval_steps = 0

  def add_step(self, tokens: int, step_time: float, wait_time: float, warm: bool) -> None:
    self.interval_tokens += tokens
    self.interval_steps += 1
    if warm:
      self.run_tokens += tokens
      self.run_steps += 1
      self.run_time += step_time
      self.run_wait += wait_time

  def interval(self) -> dict[str, float]:
    elapsed = max(time.perf_counter() - self.interval_start, 1e-9)
    steps = max(self.interval_steps, 1)
    return {
        "tokens_per_sec": self.interval_tokens / elapsed,
        "mfu": self._mfu(steps, elapsed),
        "step_time_s": elapsed / steps,
    }

  def run(self) -> dict[str, float | None]:
    if not self.run_steps:
      return {"tokens_per_sec": None, "mfu": None, "data_wait_fraction": None}
    return {
        "tokens_per_sec": self.run_tokens / self.run_time,
        "mfu": self._mfu(self.run_steps, self.run_time),
        "data_wait_fraction": self.run_wait / self.run_time,
    }

  def _mfu(self, steps: int, seconds: float) -> float:
    return self.flops_per_token * steps * self.positions_per_step / seconds / self.peak_flops


def evaluate(eval_fn, state, eval_batches) -> dict[str, float]:
  """Mean eval loss (nats/token) and bits per UTF-8 byte over the fixed validation batches."""
  totals = None
  for batch in eval_batches:
    out = eval_fn(state, batch)
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  totals = jax.device_get(totals)
  return {
      "eval_loss": float(totals["loss_sum"] / max(totals["weight_sum"], 1.0)),
      "eval_bpb": float(totals["loss_sum"] / math.log(2) / max(totals["byte_sum"], 1.0)),
  }


def _finished_summary(workdir: Path, step: int, total_steps: int) -> dict | None:
  """The summary of a run that already reached its last step, so a rerun does not redo it."""
  path = workdir / "summary.json"
  if step < total_steps or not path.exists():
    return None
  summary = json.loads(path.read_text())
  if summary.get("status") != "completed":
    return None
  logging.info("%s already finished %d steps; nothing to do.", workdir, step)
  return summary


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
  """Trains `config` in `workdir`, resuming from its newest checkpoint; returns the summary."""
  wall_start = time.perf_counter()
  workdir = Path(workdir)
  process_index, process_count = jax.process_index(), jax.process_count()
  is_main = process_index == 0

  try:
    tokenizer = get_tokenizer(config)
    shard = dict(process_index=process_index, process_count=process_count)
    train_iter = make_train_iterator(config, tokenizer, **shard)
    local_eval_batches = make_eval_batches(config, tokenizer, **shard)
  except (ValueError, FileNotFoundError) as e:  # bad data config: report it as one line
    raise ConfigError(str(e)) from e
  if tokenizer.vocab_size > config.model.vocab_size:
    raise ConfigError(
        f"model.vocab_size={config.model.vocab_size} is smaller than the tokenizer's "
        f"{tokenizer.vocab_size} tokens; use at least {tokenizer.vocab_size}"
    )

  writer = MetricWriter(workdir, enabled=is_main)
  if is_main:
    write_json_atomic(workdir / "config.json", config.to_dict())
    write_json_atomic(workdir / "data_report.json", prepare(config, tokenizer).report)
  init_from = config.get("init_from", "")
  mesh = make_mesh(config.mesh)
  with mesh, nn.logical_axis_rules(LOGICAL_AXIS_RULES):
    training = Training(config, mesh)
    manager = checkpoint.make_manager(workdir, config.keep_checkpoints)
    restored = checkpoint.restore_latest(manager, training.abstract_state, train_iter)
    if restored is None:
      base = load_params(init_from) if init_from else None
      state = training.init(config.seed, base)
      progress = {"tokens_seen": 0, "tokens_to_target": None}
    else:
      state, progress = restored
      logging.info("Resumed from step %d in %s", int(state.step), workdir)
      writer.drop_after(int(state.step))
      finished = _finished_summary(workdir, int(state.step), config.steps)
      if finished is not None:
        manager.close()
        writer.close()
        return finished

    compiled_step, compile_time_s = lower_and_compile(
        training, training.abstract_batch(local_eval_batches[0])
    )
    token_bytes = jnp.asarray(np.asarray(tokenizer.token_bytes, np.float32))
    eval_fn = training.eval_step(token_bytes)
    eval_batches = [to_global(b, training.rows_sharding) for b in local_eval_batches]

    flops_token = flops_per_token(config.model, config.seq_len)
    peak_flops, peak_source = peak_flops_total(config.model.dtype)
    throughput = Throughput(flops_token, peak_flops, config.batch_size * config.seq_len)
    start_step = int(jax.device_get(state.step))
    summary = {
        "status": "running",
        "steps": start_step,
        "tokens_seen": progress["tokens_seen"],
        "target_loss": config.target_loss,
        "tokens_to_target": progress["tokens_to_target"],
        "final_eval_loss": progress.get("final_eval_loss"),
        "final_eval_bpb": progress.get("final_eval_bpb"),
        "tokens_per_sec": None,
        "mfu": None,
        "data_wait_fraction": None,
        "flops_per_token": flops_token,
        "kv_cache_bytes_per_token": kv_cache_bytes_per_token(config.model),
        "peak_flops": peak_flops,
        "peak_flops_source": peak_source,
        "peak_memory_bytes": None,
        "param_count": training.param_count(),
        "trainable_param_count": training.trainable_param_count(),
        "optimizer_state_bytes": training.optimizer_state_bytes(),
        "peft_method": peft_config(config).method,
        "init_from": init_from or None,
        "mesh": dict(mesh.shape),
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "process_count": process_count,
        "compile_time_s": compile_time_s,
        "wall_time_s": None,
        "resumed_from_step": None if restored is None else start_step,
    }

    def run_eval(step: int) -> None:
      result = evaluate(eval_fn, state, eval_batches)
      progress.update(final_eval_loss=result["eval_loss"], final_eval_bpb=result["eval_bpb"])
      if progress["tokens_to_target"] is None and result["eval_loss"] <= config.target_loss:
        progress["tokens_to_target"] = progress["tokens_seen"]
      summary.update(
          steps=step,
          tokens_seen=progress["tokens_seen"],
          tokens_to_target=progress["tokens_to_target"],
          final_eval_loss=result["eval_loss"],
          final_eval_bpb=result["eval_bpb"],
          wall_time_s=time.perf_counter() - wall_start,
      )
      writer.write(step, {"tokens_seen": progress["tokens_seen"], **result})
      writer.write_summary(summary)
      if is_main:
        tqdm.write(
            f"step {step}: eval_loss {result['eval_loss']:.4f}  bpb {result['eval_bpb']:.4f}  "
            f"tokens_seen {progress['tokens_seen']:,}"
        )

    bar = tqdm(
        total=config.steps, initial=start_step, desc="train", unit="step", disable=not is_main,
        dynamic_ncols=True, mininterval=1.0,
    )
    pending = None  # (step, tokens_seen, device metrics): dispatched, read after the next dispatch

    def log_pending() -> None:
      nonlocal pending
      step, tokens_seen, metrics = pending
      pending = None
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items() if k != "tokens"}
      rates = throughput.interval()
      writer.write(step, {"tokens_seen": tokens_seen, **metrics, **rates})
      bar.set_postfix(
          loss=f"{metrics['loss']:.3f}", tok_s=f"{rates['tokens_per_sec']:,.0f}", refresh=False
      )
      throughput.reset_interval()

    status = "completed"
    if summary["final_eval_loss"] is None:
      run_eval(start_step)
    throughput.reset_interval()
    try:
      with StopOnSigterm() as sigterm:
        for step in range(start_step + 1, config.steps + 1):
          t0 = time.perf_counter()
          local_batch = next(train_iter)
          batch = to_global(local_batch, training.rows_sharding)
          t1 = time.perf_counter()
          state, metrics = compiled_step(state, batch)
          if pending is not None:
            log_pending()  # reads the previous step's metrics while this step runs
          tokens = int(local_batch["weights"].sum()) * process_count
          progress["tokens_seen"] += tokens
          last = step == config.steps
          evaluate_now = step % config.eval_every == 0 or last
          save_now = step % config.checkpoint_every == 0 or last
          if step % config.log_every == 0 or last:
            pending = (step, progress["tokens_seen"], metrics)
          if evaluate_now or save_now:
            # Steps still queued on the device count as training time, not eval or save time.
            jax.block_until_ready(state)
          throughput.add_step(
              tokens, time.perf_counter() - t0, t1 - t0, warm=step > start_step + 1
          )
          if evaluate_now:
            if pending is not None:
              log_pending()
            run_eval(step)
          if save_now:
            checkpoint.save(manager, state, train_iter, progress)
          bar.update(1)
          if sigterm.requested:
            raise KeyboardInterrupt
          if evaluate_now or save_now:
            throughput.reset_interval()
    except KeyboardInterrupt:
      status = "interrupted"
      logging.warning("Interrupted at step %d; saving a checkpoint.", int(state.step))
      checkpoint.save(manager, state, train_iter, progress, force=True)
    finally:
      bar.close()
      manager.wait_until_finished()

    if pending is not None:
      log_pending()
    summary.update(throughput.run())
    summary["status"] = status
    summary["steps"] = int(jax.device_get(state.step))
    summary["tokens_seen"] = progress["tokens_seen"]
    summary["peak_memory_bytes"], summary["peak_memory_source"] = peak_memory_bytes()
    summary["wall_time_s"] = time.perf_counter() - wall_start
    writer.write_summary(summary)
    writer.close()
    manager.close()
  if status == "interrupted":
    raise KeyboardInterrupt
  return summary
