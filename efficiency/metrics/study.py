"""The efficiency study's metrics (EfficientLLM, REFERENCE.md section 1), computed from a trace.

A trace is a list of `Sample`s taken over time by `Sampler` (memory, utilization, power) and a
list of per-iteration `Iteration`s. Time averages weight each sample by the interval it holds
(sample-and-hold until the next sample), so irregular sampling is averaged correctly.

  AMU  average memory utilization: time-average of memory in use (bytes).
  PCU  peak compute utilization: time-average of achieved over peak compute (0-1).
  AL   average latency: mean seconds per iteration (computation + communication).
  TT   training throughput: sum(tokens / params) / sum(seconds), tokens per parameter per second.
  ST   fine-tuning throughput: sum(samples / params) / sum(seconds).
  IT   inference throughput: generated tokens / seconds.
  AEC  average energy consumption: time-average of power (W).
  MCR  model compression rate: (size_original / size_compressed)
       * (perf_compressed / perf_original).
"""

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
  """One reading at `time_s`; None where the quantity is not measurable here."""

  time_s: float
  memory_bytes: float | None = None
  utilization: float | None = None
  power_w: float | None = None


@dataclass(frozen=True)
class Iteration:
  """One training step or request: its duration and what it processed."""

  seconds: float
  tokens: int = 0
  samples: int = 0


def time_average(samples: Sequence[Sample], field: str) -> float | None:
  """Sample-and-hold time average of `field` over the trace; None if it was never measured."""
  points = [(s.time_s, getattr(s, field)) for s in samples if getattr(s, field) is not None]
  if not points:
    return None
  if len(points) == 1:
    return float(points[0][1])
  total = sum((t1 - t0) * v0 for (t0, v0), (t1, _) in zip(points, points[1:], strict=False))
  return total / (points[-1][0] - points[0][0])


def amu(samples: Sequence[Sample]) -> float | None:
  return time_average(samples, "memory_bytes")


def pcu(samples: Sequence[Sample]) -> float | None:
  return time_average(samples, "utilization")


def aec(samples: Sequence[Sample]) -> float | None:
  return time_average(samples, "power_w")


def al(iterations: Sequence[Iteration]) -> float:
  return sum(i.seconds for i in iterations) / len(iterations)


def tt(iterations: Sequence[Iteration], params: int) -> float:
  return sum(i.tokens / params for i in iterations) / sum(i.seconds for i in iterations)


def st(iterations: Sequence[Iteration], params: int) -> float:
  return sum(i.samples / params for i in iterations) / sum(i.seconds for i in iterations)


def it(generated_tokens: int, seconds: float) -> float:
  return generated_tokens / seconds


def mcr(size_original: float, size_compressed: float, perf_original: float,
        perf_compressed: float) -> float:
  """Compression ratio times the retained fraction of performance (higher-is-better perf)."""
  return (size_original / size_compressed) * (perf_compressed / perf_original)


def metric(value, unit: str, how: str) -> dict:
  """A metric as efficiency.json writes it: its value (None where not measurable), its unit and
  how it was measured (or why it is null)."""
  return {"value": value, "unit": unit, "how": how}


def amu_metric(samples: Sequence[Sample], memory_source: str, interval_s: float) -> dict:
  """AMU over a sampler's trace, saying where memory was read and how often."""
  return metric(amu(samples), "bytes",
                f"time-average of {memory_source}, sampled every {interval_s}s "
                f"({len(samples)} samples)")


def mcr_metric(quant_report: dict) -> dict:
  """MCR as a quantized export measured it (quant_report.json), or null without one."""
  value = quant_report.get("mcr")
  return metric(value, "ratio", "from quant_report.json" if value is not None
                else "null: no quantized export (quant_report.json) in the workdir")
