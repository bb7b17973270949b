"""Peak FLOP/s per device, the denominator of MFU, and MFU guarded against a wrong peak.

Accelerators use their published dense peak for the compute dtype. A CPU has no such number, so
it is measured (`benchmarks/cpu_peak.py` runs the same measurement): the best of several float32
matmuls at a couple of sizes. A measurement is cached in ~/.cache/efficiency/peak_flops.json only
when the machine was quiet: 1-minute load average below `BUSY_LOAD` of the usable cores (plus one
for this process) and repeats within `MAX_SPREAD` of each other. Measurements under load are kept
apart as provisional (the best seen so far, measured again under load every `PROVISIONAL_TTL_S`),
used with a warning in the source until a quiet one replaces them. The cache key is what decides
the peak: the CPU's vendor, family, model and stepping, its vector and matrix extensions, the
usable cores, the device count and jax's version.

An MFU above 1 means the denominator is wrong: `Mfu` then re-measures the peak once and
recomputes; if it still exceeds 1 it reports None and says why. It never reports an MFU > 1.
"""

import dataclasses
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import logging

# Dense peak FLOP/s by device kind substring: (bfloat16, float32).
ACCELERATOR_PEAKS = {
    "H200": (989e12, 67e12),
    "H100": (989e12, 67e12),
    "A100": (312e12, 19.5e12),
    "TPU v4": (275e12, 275e12 / 2),
    "TPU v5 lite": (197e12, 197e12 / 2),
    "TPU v5p": (459e12, 459e12 / 2),
    "TPU v6": (918e12, 918e12 / 2),
}

CACHE = Path(os.environ.get("EFFICIENCY_CACHE", Path.home() / ".cache" / "efficiency"))
KEY_VERSION = "v2"  # keys of other formats (the old "{model name}|cores=N|jax=V") are ignored

# CPU features that change matmul throughput: x86 (/proc/cpuinfo "flags") and Arm ("Features").
PEAK_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl",
    "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8",
    "amx_fp16", "asimd", "asimdhp", "asimddp", "sve", "sve2", "bf16", "i8mm", "sme",
)
# Fields naming the CPU's microarchitecture: x86, then Arm.
ID_FIELDS = (
    "vendor_id", "cpu family", "model", "stepping",
    "CPU implementer", "CPU architecture", "CPU variant", "CPU part", "CPU revision",
)

SIZES = (1024, 2048)  # matmul sizes measured; the peak is the best of all repeats
REPEATS = 5
TIME_BUDGET_S = 4.0  # a measurement stops repeating once it has taken this long
BUSY_LOAD = 0.25  # share of the usable cores others may load (besides this process)
MAX_SPREAD = 0.3  # median repeat at most this much slower than the best one
ATTEMPTS = 2  # measurements tried before settling for one under load
PROVISIONAL_TTL_S = 600  # under load, a provisional peak this recent is reused, not re-measured


def parse_cpuinfo(text: str) -> dict:
  """The first processor's identity fields, model name and peak-relevant flags."""
  fields, flags = {}, set()
  for line in text.splitlines():
    if not line.strip():
      if fields:
        break  # the first processor is enough
      continue
    name, _, value = (part.strip() for part in line.partition(":"))
    if name in ID_FIELDS or name == "model name":
      fields.setdefault(name, value)
    elif name in ("flags", "Features"):
      flags.update(value.split())
  return {"fields": fields, "flags": sorted(f for f in PEAK_FLAGS if f in flags)}


def _read(path: str) -> str | None:
  try:
    return Path(path).read_text()
  except OSError:
    return None


def usable_cores() -> int:
  """Cores this process may run on (its affinity mask, not the machine's count)."""
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    return os.cpu_count() or 1


def cpu_key(cpuinfo: str | None = None, cores: int | None = None,
            devices: int | None = None) -> str:
  """The cache key of the CPU peak: everything the measurement depends on."""
  cpuinfo = _read("/proc/cpuinfo") if cpuinfo is None else cpuinfo
  parsed = parse_cpuinfo(cpuinfo or "")
  ident = " ".join(f"{k}={v}" for k, v in parsed["fields"].items() if k in ID_FIELDS)
  name = parsed["fields"].get("model name") or platform.processor() or platform.machine()
  cores = usable_cores() if cores is None else cores
  devices = jax.local_device_count() if devices is None else devices
  return (
      f"{KEY_VERSION}|{name}|{ident or 'unknown id'}|flags={','.join(parsed['flags'])}"
      f"|cores={cores}|devices={devices}|jax={jax.__version__}"
  )


def loadavg() -> float | None:
  """The 1-minute load average, None where the system does not report it."""
  text = _read("/proc/loadavg")
  try:
    return float(text.split()[0]) if text else os.getloadavg()[0]
  except (OSError, ValueError, IndexError):
    return None


def time_matmuls(n: int, repeats: int, dtype=jnp.float32, deadline: float = float("inf"),
                 timer: Callable[[], float] = time.perf_counter) -> list[float]:
  """Seconds of each of `repeats` n x n x n matmuls (after one warm-up), stopping at `deadline`
  (a `timer` time) once two have run."""
  x = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a: a @ a)
  f(x).block_until_ready()
  times = []
  for _ in range(repeats):
    start = timer()
    f(x).block_until_ready()
    times.append(timer() - start)
    if len(times) >= 2 and timer() > deadline:
      break
  return times


def measure_matmul_flops(n: int = 2048, repeats: int = 10, dtype=jnp.float32) -> float:
  """Best FLOP/s of an n x n x n matmul (XLA's CPU matmul uses all the process's cores)."""
  return 2 * n**3 / min(time_matmuls(n, repeats, dtype))


def measure_cpu_peak(
    sizes: tuple[int, ...] = SIZES,
    repeats: int = REPEATS,
    time_fn: Callable[[int, int, float], list[float]] | None = None,
    load_fn: Callable[[], float | None] = loadavg,
    cores: int | None = None,
) -> dict:
  """One measurement: the best float32 matmul FLOP/s over `sizes` x `repeats`, with whether the
  machine was quiet enough to trust it. `time_fn(n, repeats, deadline)` and `load_fn` are the
  timing and the load average (injectable for tests)."""
  time_fn = time_fn or (lambda n, r, deadline: time_matmuls(n, r, deadline=deadline))
  cores = usable_cores() if cores is None else cores
  start = time.perf_counter()
  deadline = start + TIME_BUDGET_S / len(sizes)
  load_before = load_fn()
  per_size, spreads = {}, []
  for n in sizes:
    times = time_fn(n, repeats, deadline)
    deadline += TIME_BUDGET_S / len(sizes)
    per_size[str(n)] = 2 * n**3 / min(times)
    spreads.append(statistics.median(times) / min(times) - 1)
  load = max((v for v in (load_before, load_fn()) if v is not None), default=None)
  reasons = []
  if load is not None and load > 1 + BUSY_LOAD * cores:
    reasons.append(f"load average {load:.2f} on {cores} cores")
  if max(spreads) > MAX_SPREAD:
    reasons.append(f"repeats spread {max(spreads):.0%}")
  return {
      "flops": max(per_size.values()),
      "by_size": per_size,
      "spread": round(max(spreads), 4),
      "loadavg": load,
      "quiet": not reasons,
      "busy": "; ".join(reasons) or None,
      "seconds": round(time.perf_counter() - start, 3),
      "measured": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
      "time": time.time(),
  }


@dataclasses.dataclass
class Peak:
  """A peak FLOP/s of all the job's devices, how it was obtained and (CPU) its cache key and
  measurement."""

  flops: float
  source: str
  key: str | None = None
  details: dict | None = None

  @property
  def measured(self) -> bool:
    return self.key is not None


def _load_cache(path: Path) -> dict:
  try:
    cache = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError):
    return {}
  return cache if isinstance(cache, dict) else {}


def _save_cache(path: Path, cache: dict) -> None:
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cache, indent=2))
    os.replace(tmp, path)
  except OSError as e:
    logging.warning("Could not write the CPU peak cache %s: %s", path, e)


def _entry(cache: dict, key: str) -> dict | None:
  entry = cache.get(key)
  return entry if isinstance(entry, dict) and isinstance(entry.get("flops"), float) else None


def cpu_peak(
    refresh: bool = False,
    key: str | None = None,
    measure: Callable[[], dict] = measure_cpu_peak,
    load_fn: Callable[[], float | None] = loadavg,
    cache_dir: Path | None = None,
) -> Peak:
  """This process's CPU matmul peak (all its devices share it): the cached quiet measurement,
  else a new one (cached if quiet), else under load the best provisional one, with a warning.
  `refresh` measures again whatever is cached."""
  key = key or cpu_key()
  path = (cache_dir or CACHE) / "peak_flops.json"
  cache = _load_cache(path)
  trusted, provisional = _entry(cache, key), _entry(cache, f"{key}|provisional")
  if trusted and not refresh:
    return Peak(trusted["flops"], "measured CPU matmul peak (cached)", key, trusted)
  load, cores = load_fn(), usable_cores()
  recent = provisional and time.time() - provisional.get("time", 0) < PROVISIONAL_TTL_S
  if recent and not refresh and load is not None and load > 1 + BUSY_LOAD * cores:
    return Peak(provisional["flops"], _busy_source(provisional, "provisional, not re-measured"),
                key, provisional)
  result = None
  for _ in range(ATTEMPTS):
    attempt = measure()
    if result is None or attempt["flops"] > result["flops"]:
      result = attempt
    if attempt["quiet"]:
      result = attempt
      break
    if load is not None and load > 1 + BUSY_LOAD * cores:
      break  # the load average will not drop within a retry
  cache = _load_cache(path)  # another process may have written meanwhile
  if result["quiet"]:
    cache[key] = result
    cache.pop(f"{key}|provisional", None)
    _save_cache(path, cache)
    how = "re-measured" if refresh else "measured"
    return Peak(result["flops"], f"{how} CPU matmul peak (cached)", key, result)
  if provisional and provisional["flops"] > result["flops"]:
    result = {**provisional, "busy": result["busy"], "time": result.get("time", time.time())}
  cache[f"{key}|provisional"] = result
  _save_cache(path, cache)
  logging.warning("CPU peak measured under load (%s): %.1f GFLOP/s, not cached; MFU may be "
                  "overstated.", result["busy"], result["flops"] / 1e9)
  return Peak(result["flops"], _busy_source(result, "not cached"), key, result)


def _busy_source(entry: dict, what: str) -> str:
  return (f"measured CPU matmul peak under load ({entry.get('busy')}; {what}): "
          f"MFU may be overstated")


def peak_flops_total(dtype: str = "float32", refresh: bool = False) -> Peak:
  """Peak FLOP/s of all devices of the job together, and how it was obtained."""
  device = jax.devices()[0]
  if device.platform == "cpu":
    peak = cpu_peak(refresh)
    peak.flops *= jax.process_count()
    return peak
  for name, (bf16, fp32) in ACCELERATOR_PEAKS.items():
    if name.lower() in device.device_kind.lower():
      peak = bf16 if dtype == "bfloat16" else fp32
      return Peak(peak * jax.device_count(),
                  f"published {dtype} dense peak of {device.device_kind}")
  return Peak(float("nan"), f"unknown peak for {device.device_kind}")


def mfu(model_flops: float, seconds: float, peak_flops: float) -> float:
  """Model FLOPs utilization: model FLOPs (`efficiency.model.flops`) done per second over the
  peak FLOP/s of the devices that did them (unchecked; see `Mfu`)."""
  return model_flops / seconds / peak_flops


class Mfu:
  """MFU against `peak`, never above 1: the first MFU above 1 re-measures a measured peak
  (`remeasure`) and recomputes; one still above 1 (or against a published peak) is None, with
  the reason in `note`."""

  def __init__(self, peak: Peak, remeasure: Callable[[], Peak] | None = None):
    self.peak = peak
    self.remeasure = remeasure
    self.remeasured = False
    self.note: str | None = None

  def __call__(self, model_flops: float, seconds: float) -> float | None:
    value = mfu(model_flops, seconds, self.peak.flops)
    if value > 1 and self.peak.measured and self.remeasure and not self.remeasured:
      self.remeasured = True
      old = self.peak.flops
      self.peak = self.remeasure()
      self.peak.source += f"; re-measured after an MFU of {value:.2f} at {old / 1e9:.1f} GFLOP/s"
      logging.warning("MFU %.2f > 1 against a peak of %.1f GFLOP/s: the peak was wrong; "
                      "re-measured it: %.1f GFLOP/s.", value, old / 1e9, self.peak.flops / 1e9)
      value = mfu(model_flops, seconds, self.peak.flops)
    if value > 1:
      self.note = (f"MFU {value:.2f} > 1 against a peak of {self.peak.flops / 1e9:.1f} GFLOP/s "
                   f"({self.peak.source}): the peak is wrong, so MFU is not reported")
      logging.warning("%s.", self.note)
      return None
    return value
