"""Where the batch graph's time and memory go, stage by stage, on the FnApiRunner.

    python -m bench.stages [--events 100000] [--seed 42] [--workdir bench/results]

Runs the graph of `bench.throughput` once on the same generated input and prints, for each fused
stage the runner executed, its wall time, its share of the run, the process's resident memory
when it started and the highest seen while it ran (sampled every 20 ms), and the pipeline steps
fused into it. The stage boundaries come from the FnApiRunner's debug log line "Running bundle
for stage ..." (Beam 2.77): a Beam upgrade that rewords it leaves the table empty, and the
command then says so rather than printing nothing.
"""
from __future__ import annotations

import argparse
import logging
import pathlib
import re
import sys
import threading
import time

from bench import throughput

_RUNNER_LOGGERS = ('apache_beam.runners.portability.fn_api_runner.fn_runner',
                   'apache_beam.runners.portability.fn_api_runner.fn_runner.bundle')
_STAGE_PREFIX = 'Running bundle for stage '


def _rss_mib() -> int:
  with open('/proc/self/status', encoding='ascii') as status:
    for line in status:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) // 1024
  return 0


def _steps(stage_name: str) -> str:
  """The user-facing step labels of a fused stage name, without runner plumbing."""
  steps = []
  for part in re.split(r'[()+]+', stage_name):
    part = part.strip()
    if not part or part.startswith('ref_PCollection'):
      continue
    part = re.sub(r'^ref_AppliedPTransform_', '', part)
    part = re.sub(r'_\d+$', '', part)
    steps.append(part)
  return ' + '.join(steps)


class _StageClock(logging.Handler):
  """Records (start time, stage name) for every stage the runner logs, and the peak memory of
  each stage from a sampling thread."""

  def __init__(self):
    super().__init__(logging.DEBUG)
    self.stages: list[list] = []  # [start, name, rss at start, peak rss]
    self._lock = threading.Lock()
    self._stop = threading.Event()
    self._sampler = threading.Thread(target=self._sample, daemon=True)

  def emit(self, record):
    message = record.getMessage()
    if message.startswith(_STAGE_PREFIX):
      rss = _rss_mib()
      with self._lock:
        self.stages.append([time.perf_counter(), message[len(_STAGE_PREFIX):].splitlines()[0],
                            rss, rss])

  def _sample(self):
    while not self._stop.wait(0.02):
      rss = _rss_mib()
      with self._lock:
        if self.stages:
          self.stages[-1][3] = max(self.stages[-1][3], rss)

  def __enter__(self):
    self._saved = {}
    for name in _RUNNER_LOGGERS:
      logger = logging.getLogger(name)
      self._saved[name] = (logger.level, logger.propagate)
      logger.setLevel(logging.DEBUG)
      logger.addHandler(self)
      logger.propagate = False
    self._sampler.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._sampler.join()
    for name, (level, propagate) in self._saved.items():
      logger = logging.getLogger(name)
      logger.removeHandler(self)
      logger.setLevel(level)
      logger.propagate = propagate


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--events', type=int, default=100_000)
  parser.add_argument('--seed', type=int, default=42)
  parser.add_argument('--workdir', default='bench/results')
  parser.add_argument('--top', type=int, default=12, help='stages to list (the slowest)')
  args = parser.parse_args(argv)
  workdir = pathlib.Path(args.workdir)
  path, manifest = throughput.ensure_input(workdir, args.events, args.seed)
  start = time.perf_counter()
  with _StageClock() as clock:
    throughput.run_graph(path, path.parent / 'customers.csv', path.parent / 'catalog.csv',
                         workdir / 'out-stages')
  end = time.perf_counter()
  if not clock.stages:
    print('no stage was logged: the FnApiRunner no longer logs "Running bundle for stage" '
          '(see the module docstring)', file=sys.stderr)
    return 1
  rows = []
  for i, (began, name, rss, peak) in enumerate(clock.stages):
    finished = clock.stages[i + 1][0] if i + 1 < len(clock.stages) else end
    rows.append((finished - began, rss, peak, _steps(name)))
  total = end - start
  before = clock.stages[0][0] - start
  print(f'{manifest["lines_total"]:,} events: {total:.1f} s in all, {len(rows)} stages; '
        f'{before:.1f} s before the first stage (graph construction and optimisation)')
  print(f'{"seconds":>8} {"share":>6} {"MiB at start":>12} {"peak MiB":>9}  steps')
  for seconds, rss, peak, steps in sorted(rows, reverse=True)[:args.top]:
    print(f'{seconds:8.2f} {seconds / total:6.1%} {rss:12,d} {peak:9,d}  {steps}')
  rest = sorted(rows, reverse=True)[args.top:]
  if rest:
    print(f'{sum(r[0] for r in rest):8.2f} {sum(r[0] for r in rest) / total:6.1%} '
          f'{"":>12} {max(r[2] for r in rest):9,d}  the other {len(rest)} stages')
  return 0


if __name__ == '__main__':
  sys.exit(main())
