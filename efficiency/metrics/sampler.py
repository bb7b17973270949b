"""Background sampling of memory, utilization and power while a workload runs.

Sources, best first, each recorded with the reason another was not used:
  memory:      device allocator `bytes_in_use` (GPU/TPU); else the process's resident set size.
  utilization: NVML GPU utilization on NVIDIA GPUs; else null here (callers use MFU instead).
  power:       NVML power on NVIDIA GPUs; else RAPL package energy counters on CPUs where
               /sys/class/powercap is readable; else null, with the reason.
"""

import glob
import threading
import time
from pathlib import Path

import jax
import psutil

from efficiency.metrics.study import Sample

RAPL_GLOB = "/sys/class/powercap/intel-rapl:[0-9]*/energy_uj"


def _nvml():
  """The NVML module with an initialized handle for GPU 0, or (None, reason)."""
  if jax.devices()[0].platform != "gpu":
    return None, "not an NVIDIA GPU"
  try:
    import pynvml  # provided by nvidia-ml-py, where installed
  except ImportError:
    return None, "pynvml (nvidia-ml-py) is not installed"
  try:
    pynvml.nvmlInit()
    return (pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)), ""
  except pynvml.NVMLError as e:
    return None, f"NVML unavailable: {e}"


class Sampler:
  """Samples every `interval_s` seconds in a thread between `start()` and `stop()`."""

  def __init__(self, interval_s: float = 0.1):
    self.interval_s = interval_s
    self.samples: list[Sample] = []
    self.sources: dict[str, str] = {}
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._device = jax.local_devices()[0]
    self._process = psutil.Process()
    self._nvml, nvml_reason = _nvml()
    self._rapl = [Path(p) for p in glob.glob(RAPL_GLOB)]
    self._last_energy = None
    device_stats = self._device.memory_stats() or {}
    self.sources["memory"] = (
        "device bytes_in_use" if "bytes_in_use" in device_stats else "process RSS (psutil)"
    )
    self.sources["utilization"] = "NVML GPU utilization" if self._nvml else f"null: {nvml_reason}"
    if self._nvml:
      self.sources["power"] = "NVML power"
    elif self._rapl and self._read_rapl() is not None:
      self.sources["power"] = f"RAPL energy counters ({len(self._rapl)} packages)"
    else:
      self.sources["power"] = (
          f"null: {nvml_reason}; no readable RAPL counters at {RAPL_GLOB}"
      )

  def _read_rapl(self) -> float | None:
    try:
      return sum(int(p.read_text()) for p in self._rapl) / 1e6  # joules
    except (OSError, ValueError):
      return None

  def sample(self) -> Sample:
    now = time.perf_counter()
    stats = self._device.memory_stats() or {}
    memory = stats.get("bytes_in_use", None)
    if memory is None:
      memory = self._process.memory_info().rss
    utilization = power = None
    if self._nvml:
      nvml, handle = self._nvml
      utilization = nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
      power = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
    elif self.sources["power"].startswith("RAPL"):
      energy = self._read_rapl()
      if energy is not None and self._last_energy is not None:
        (t0, e0) = self._last_energy
        power = (energy - e0) / max(now - t0, 1e-9)
      self._last_energy = (now, energy)
    return Sample(now, float(memory), utilization, power)

  def _run(self) -> None:
    while not self._stop.is_set():
      self.samples.append(self.sample())
      self._stop.wait(self.interval_s)

  def start(self) -> "Sampler":
    self._thread.start()
    return self

  def stop(self) -> list[Sample]:
    self._stop.set()
    self._thread.join()
    self.samples.append(self.sample())
    return self.samples
