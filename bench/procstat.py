"""CPU time read from /proc, for the benchmarks' "cores" columns (Linux only)."""
from __future__ import annotations

import os
import pathlib

TICK = os.sysconf('SC_CLK_TCK')


def cpu_seconds(pid: int) -> float:
  """User + system CPU seconds of process `pid` so far; 0.0 once it has gone."""
  try:
    fields = pathlib.Path(f'/proc/{pid}/stat').read_text().rpartition(')')[2].split()
  except OSError:
    return 0.0
  return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy_seconds() -> float:
  """CPU seconds the whole machine spent busy (all but idle and iowait) since boot."""
  values = [int(v) for v in pathlib.Path('/proc/stat').read_text().split()[1:9]]
  return (sum(values) - values[3] - values[4]) / TICK
