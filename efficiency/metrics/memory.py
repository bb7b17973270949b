"""Peak memory: device allocator stats where the backend has them, else the process's peak RSS."""

import resource
import sys

import jax


def peak_memory_bytes() -> tuple[int, str]:
  """Peak bytes in use on the first local device, or the process's max resident set size."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  scale = 1 if sys.platform == "darwin" else 1024
  return int(rss * scale), "process max RSS"
