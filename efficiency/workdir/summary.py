"""The run summary (summary.json): the one definition of its keys.

train.py keeps it current during a run and final at its end; sweeps tabulate it and notebooks
read it. Features add their own keys here (`kv_cache_bytes_per_token`, the PEFT counts, ...).
"""

import dataclasses

STATUSES = ("running", "completed", "interrupted", "diverged", "failed")


@dataclasses.dataclass
class Summary:
  """Where a run is and what it cost. Rates are over the run's warm steps (its first step of
  each process waits on compilation and is left out)."""

  status: str = "running"  # one of STATUSES
  steps: int = 0
  tokens_seen: int = 0  # real (non-padding) target tokens
  target_loss: float | None = None
  tokens_to_target: int | None = None  # tokens_seen at the first eval at or below target_loss
  flops_seen: int = 0  # model FLOPs of the steps so far, each at its row length (warmup buckets)
  flops_to_target: int | None = None  # flops_seen at that eval
  # Seconds in train steps up to that eval (data wait included; compiles, evals, saves not).
  time_to_target_s: float | None = None
  final_eval_loss: float | None = None  # nats per token
  final_eval_bpb: float | None = None  # bits per UTF-8 byte
  tokens_per_sec: float | None = None
  mfu: float | None = None  # never above 1; None with `mfu_note` when the peak proved wrong
  mfu_note: str | None = None  # why an MFU was left out (efficiency.metrics.peak.Mfu)
  data_wait_fraction: float | None = None  # share of step time spent waiting for batches
  flops_per_token: int | None = None  # the MFU numerator (efficiency.model.flops)
  kv_cache_bytes_per_token: float | None = None
  moe_load_max: float | None = None  # MoE: busiest expert's share x experts (1: balanced), last log
  peak_flops: float | None = None  # the MFU denominator, all devices together
  peak_flops_source: str | None = None  # published, cached measurement, or measured under load
  peak_flops_key: str | None = None  # CPU: the cache key (CPU id, flags, cores, devices, jax)
  peak_flops_measurement: dict | None = None  # CPU: per-size FLOP/s, spread, load, when
  peak_memory_bytes: int | None = None
  peak_memory_source: str | None = None
  param_count: int | None = None
  trainable_param_count: int | None = None
  optimizer_state_bytes: int | None = None
  peft_method: str | None = None
  init_from: str | None = None
  mesh: dict | None = None
  devices: int | None = None
  device_kind: str | None = None
  process_count: int | None = None
  compile_time_s: float | None = None  # every train-step compile (full length, warmup buckets)
  attention_impl: str | None = None  # what model.attention_impl ran (auto: what it picked)
  step_temp_bytes: int | None = None  # XLA's temporary bytes of the compiled full-length step
  wall_time_s: float | None = None
  resumed_from_step: int | None = None
  checkpoint_step: int | None = None  # the newest committed checkpoint when the run ended
  # The goodput account over every launch of the run (efficiency.train.goodput): seconds per
  # part (they add up to the launches' wall time), training-step time over that wall time, and
  # one record per launch (start, end, how it ended, steps, its parts, lost steps).
  time_breakdown: dict | None = None
  goodput: float | None = None
  launches: list | None = None
  # From a profile window (profile_summary.json): the XLA op group with the most device time
  # and its share of the traced step.
  top_op_group: str | None = None
  top_op_group_share: float | None = None
  # A mixture (data.mixture), by source label: real target tokens trained on, and the newest
  # eval's loss and bits per byte on each source's validation split alone.
  tokens_per_source: dict | None = None
  eval_loss_per_source: dict | None = None
  eval_bpb_per_source: dict | None = None


SUMMARY_KEYS = tuple(f.name for f in dataclasses.fields(Summary))

# The keys a sweep's results table shows, one column each.
RESULT_KEYS = (
    "status", "steps", "tokens_seen", "final_eval_loss", "final_eval_bpb", "tokens_to_target",
    "flops_to_target", "time_to_target_s",
    "tokens_per_sec", "mfu", "peak_memory_bytes", "param_count", "kv_cache_bytes_per_token",
    "data_wait_fraction", "compile_time_s", "wall_time_s", "goodput", "top_op_group",
    "top_op_group_share",
)

# A mixture's keys by source label, shown in sweep tables as one column per source.
PER_SOURCE_KEYS = ("tokens_per_source", "eval_loss_per_source", "eval_bpb_per_source")
