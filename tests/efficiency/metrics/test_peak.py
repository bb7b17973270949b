"""The MFU denominator: the CPU peak's cache key, its measurement under load, and MFU > 1."""

import json
import time

import jax
import pytest

from efficiency.metrics import peak as peak_lib
from efficiency.metrics.peak import Mfu, Peak
from efficiency.train.loop import Throughput

AVX512 = (
    "fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c hypervisor avx2 avx512f avx512dq avx512bw "
    "avx512vl avx512_bf16 avx512_vnni"
)
AVX2 = "fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c hypervisor avx2"


def cpuinfo(flags: str = AVX512, family: int = 25, model: int = 17, stepping: int = 1,
            processors: int = 2) -> str:
  """/proc/cpuinfo text of an x86 machine with `processors` identical processors."""
  block = (
      "processor\t: {i}\nvendor_id\t: AuthenticAMD\ncpu family\t: {family}\nmodel\t\t: {model}\n"
      "model name\t: AMD EPYC\nstepping\t: {stepping}\ncpu MHz\t\t: 2596.1\nflags\t\t: {flags}\n"
  )
  return "\n".join(
      block.format(i=i, family=family, model=model, stepping=stepping, flags=flags)
      for i in range(processors)
  )


def test_key_tells_apart_what_decides_the_peak():
  key = peak_lib.cpu_key(cpuinfo(), cores=2, devices=1)
  assert key.startswith("v2|AMD EPYC|") and "avx512f" in key and "cores=2" in key
  assert f"jax={jax.__version__}" in key
  assert peak_lib.cpu_key(cpuinfo(), cores=2, devices=1) == key
  # The same model name on another generation, other flags, cores or devices: another key.
  others = [
      peak_lib.cpu_key(cpuinfo(flags=AVX2), cores=2, devices=1),
      peak_lib.cpu_key(cpuinfo(family=23, model=49), cores=2, devices=1),
      peak_lib.cpu_key(cpuinfo(stepping=0), cores=2, devices=1),
      peak_lib.cpu_key(cpuinfo(), cores=4, devices=1),
      peak_lib.cpu_key(cpuinfo(), cores=2, devices=8),
      peak_lib.cpu_key(cpuinfo(flags=AVX512 + " amx_tile amx_bf16"), cores=2, devices=1),
  ]
  assert len({key, *others}) == len(others) + 1
  # Flags that do not change matmul throughput do not split the cache.
  assert peak_lib.cpu_key(cpuinfo(flags=AVX512 + " rdrand smap"), cores=2, devices=1) == key


def test_key_on_arm():
  text = (
      "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd asimddp sve sve2 bf16 i8mm\n"
      "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd4f\n"
      "CPU revision\t: 1\n"
  )
  parsed = peak_lib.parse_cpuinfo(text)
  assert parsed["flags"] == ["asimd", "asimddp", "bf16", "i8mm", "sve", "sve2"]
  assert parsed["fields"]["CPU part"] == "0xd4f"
  assert "CPU part=0xd4f" in peak_lib.cpu_key(text, cores=64, devices=1)


def fixed_times(*times):
  return lambda n, repeats, deadline: list(times)


def test_measurement_under_load_is_refused():
  steady = fixed_times(0.010, 0.011, 0.010, 0.012, 0.010)
  quiet = peak_lib.measure_cpu_peak(sizes=(1024,), time_fn=steady, load_fn=lambda: 0.2, cores=2)
  assert quiet["quiet"] and quiet["busy"] is None
  assert quiet["flops"] == pytest.approx(2 * 1024**3 / 0.010)

  loaded = peak_lib.measure_cpu_peak(sizes=(1024,), time_fn=steady, load_fn=lambda: 3.0, cores=2)
  assert not loaded["quiet"] and "load average 3.00 on 2 cores" in loaded["busy"]

  noisy = fixed_times(0.010, 0.030, 0.025, 0.020, 0.031)  # others took the cores between repeats
  spread = peak_lib.measure_cpu_peak(sizes=(1024,), time_fn=noisy, load_fn=lambda: None, cores=2)
  assert not spread["quiet"] and "spread" in spread["busy"]


def test_best_over_sizes():
  def times(n, repeats, deadline):
    return [2 * n**3 / (100e9 if n == 2048 else 50e9)] * 3

  result = peak_lib.measure_cpu_peak(sizes=(1024, 2048), time_fn=times, load_fn=lambda: 0.0)
  assert result["flops"] == pytest.approx(100e9)
  assert result["by_size"] == {"1024": pytest.approx(50e9), "2048": pytest.approx(100e9)}


class FakeMeasure:
  """Measurements handed out in turn, counting calls."""

  def __init__(self, *results):
    self.results, self.calls = list(results), 0

  def __call__(self) -> dict:
    self.calls += 1
    return self.results.pop(0)


def result(flops: float, quiet: bool, age_s: float = 0.0) -> dict:
  busy = None if quiet else "load average 3.00"
  return {"flops": flops, "quiet": quiet, "busy": busy, "time": time.time() - age_s}


def test_quiet_measurement_is_cached(tmp_path):
  measure = FakeMeasure(result(400e9, True))
  first = peak_lib.cpu_peak(key="k", measure=measure, load_fn=lambda: 0.0, cache_dir=tmp_path)
  again = peak_lib.cpu_peak(key="k", measure=measure, load_fn=lambda: 0.0, cache_dir=tmp_path)
  assert first.flops == again.flops == 400e9 and measure.calls == 1
  assert "cached" in again.source and again.key == "k" and again.details["quiet"]
  assert json.loads((tmp_path / "peak_flops.json").read_text())["k"]["flops"] == 400e9


def test_busy_measurement_is_not_cached(tmp_path):
  busy = lambda: 100.0
  measure = FakeMeasure(result(27e9, False), result(30e9, False))
  first = peak_lib.cpu_peak(key="k", measure=measure, load_fn=busy, cache_dir=tmp_path)
  assert first.flops == 27e9 and measure.calls == 1  # no retry while the load average is high
  assert "under load" in first.source and "not cached" in first.source
  cache = json.loads((tmp_path / "peak_flops.json").read_text())
  assert "k" not in cache and cache["k|provisional"]["flops"] == 27e9
  # Still busy: the provisional best is used without measuring again, still with the warning.
  again = peak_lib.cpu_peak(key="k", measure=measure, load_fn=busy, cache_dir=tmp_path)
  assert again.flops == 27e9 and measure.calls == 1 and "under load" in again.source
  # Quiet at last: measured, cached, the provisional one dropped.
  measure = FakeMeasure(result(460e9, True))
  quiet = peak_lib.cpu_peak(key="k", measure=measure, load_fn=lambda: 0.0, cache_dir=tmp_path)
  assert quiet.flops == 460e9 and "under load" not in quiet.source
  assert set(json.loads((tmp_path / "peak_flops.json").read_text())) == {"k"}


def test_old_provisional_peak_is_measured_again_keeping_the_best(tmp_path):
  busy = lambda: 100.0
  stale = result(27e9, False, age_s=2 * peak_lib.PROVISIONAL_TTL_S)
  (tmp_path / "peak_flops.json").write_text(json.dumps({"k|provisional": stale}))
  measure = FakeMeasure(result(100e9, False))
  peak = peak_lib.cpu_peak(key="k", measure=measure, load_fn=busy, cache_dir=tmp_path)
  assert measure.calls == 1 and peak.flops == 100e9 and "under load" in peak.source
  measure = FakeMeasure(result(50e9, False))  # recent now: reused, no new measurement
  assert peak_lib.cpu_peak(key="k", measure=measure, load_fn=busy, cache_dir=tmp_path).flops == (
      100e9
  )
  assert measure.calls == 0


def test_spread_is_retried_then_best_kept(tmp_path):
  measure = FakeMeasure(result(100e9, False), result(300e9, False))
  peak = peak_lib.cpu_peak(key="k", measure=measure, load_fn=lambda: 0.0, cache_dir=tmp_path)
  assert measure.calls == peak_lib.ATTEMPTS and peak.flops == 300e9
  assert "under load" in peak.source


def test_old_key_format_is_not_used(tmp_path):
  old_key = f"AMD EPYC|cores=2|jax={jax.__version__}"
  (tmp_path / "peak_flops.json").write_text(json.dumps({old_key: 27e9}))
  key = peak_lib.cpu_key(cpuinfo(), cores=2, devices=1)
  measure = FakeMeasure(result(460e9, True))
  peak = peak_lib.cpu_peak(key=key, measure=measure, load_fn=lambda: 0.0, cache_dir=tmp_path)
  assert peak.flops == 460e9 and measure.calls == 1
  # A bare number under the new key (not a measurement record) is not trusted either.
  (tmp_path / "peak_flops.json").write_text(json.dumps({key: 27e9}))
  measure = FakeMeasure(result(460e9, True))
  assert peak_lib.cpu_peak(key=key, measure=measure, load_fn=lambda: 0.0,
                           cache_dir=tmp_path).flops == 460e9


def test_mfu_above_one_remeasures_the_peak():
  remeasured = []

  def remeasure():
    remeasured.append(True)
    return Peak(460e9, "re-measured CPU matmul peak (cached)", "k")

  meter = Mfu(Peak(27e9, "measured CPU matmul peak (cached)", "k"), remeasure)
  value = meter(140e9, 1.0)  # 5.2 against the stale peak
  assert value == pytest.approx(140 / 460) and len(remeasured) == 1
  assert meter.note is None and "re-measured after an MFU of 5.19" in meter.peak.source
  assert meter(150e9, 1.0) == pytest.approx(150 / 460) and len(remeasured) == 1


def test_mfu_still_above_one_is_not_reported():
  meter = Mfu(Peak(27e9, "measured", "k"), lambda: Peak(30e9, "re-measured", "k"))
  assert meter(140e9, 1.0) is None
  assert "MFU 4.67 > 1" in meter.note and "not reported" in meter.note
  published = Mfu(Peak(1e12, "published float32 dense peak of H200"), remeasure=None)
  assert published(2e12, 1.0) is None and "MFU 2.00 > 1" in published.note
  assert published(0.5e12, 1.0) == pytest.approx(0.5)


def test_throughput_never_reports_mfu_above_one():
  meter = Mfu(Peak(1e9, "measured", "k"), lambda: Peak(1e9, "re-measured", "k"))
  throughput = Throughput(meter)
  for _ in range(3):
    throughput.add_step(tokens=1000, flops=1e9, step_time=0.01, wait_time=0.0, warm=True)
  assert throughput.run()["mfu"] is None and meter.note
  assert throughput.interval()["mfu"] is None
