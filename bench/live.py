"""Live composites on the FnApiRunner: the streaming path's steps fed a bounded input, against the
batch graph on the same events.

    python -m bench.live [--events 100000] [--repeat 3] [--seed 42] [--workdir bench/results]
                         [--constant_state_weights]

Both sides read the same generated NDJSON.gz file, CRM export and catalog as `bench.throughput`
(its `ensure_input`), and write their outputs as JSON lines with its sinks, on the FnApiRunner
with one worker (`direct_num_workers=1`): the same Python SDK harness that Dataflow Runner v2
workers run, without the local streaming runner's per-bundle overhead.

- **live**: `ReadWholeEventFiles` and `ParseEvents`, then `live_graph`: the streaming branch of
  `pipeline.graph.build_outputs` on those events: `DedupeStream` (without the warehouse look-up,
  which needs BigQuery), `AssignEventTime` and `HourlyWindowed`, `LiveProfiles` (`StitchLive`,
  `FoldLive` with the CRM and catalog from the files and no popularity source, which is
  Firestore, and `LivePopularity`). It writes events, dead letters, hourly rows, documents,
  triggers and popularity documents.
- **batch**: `bench.throughput.run_graph` (`pipeline.graph.build_outputs` in batch mode).

Each side runs in its own spawned process, alternating, `--repeat` times. Prints, per side, the
median events/s (wall time, one worker: at most one core) and events per CPU-second of the
process (what one core does, less sensitive to other work on the machine), peak memory, the ratio
live/batch, and what each produced. The benchmark checks that both kept the same events, dead
letters and hourly rows and wrote documents for the same customers; it exits 1 if not.

What the FnApiRunner does with the live composites (Beam 2.77; docs/PERFORMANCE.md has the
evidence): it runs their state (ReadModifyWriteState, BagState) and processing-time timers, with
two differences from a streaming runner. It releases a processing-time timer by its hold
timestamp, which the Python SDK sets to the input element's timestamp (MIN_TIMESTAMP here), not
by its firing time: every timer fires as soon as the bundles ready before it are done, and its
callback sees the firing time it was set for. And it buffers a stage's timers by timer family id
alone (apache/beam#21995), so the graph's stateful DoFns give their timers distinct names
(tests/unit/test_graph.py checks it).
"""
from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import pathlib
import platform
import queue
import resource
import shutil
import statistics
import sys
import time
import typing

import apache_beam as beam
from apache_beam.runners.worker import statecache
from apache_beam.transforms.window import GlobalWindows

from bench import throughput
from pipeline.options import GraphSettings, PersonalizationOptions
from transforms.clean import ParseEvents
from transforms.dedupe import DedupeStream
from transforms.live_profiles import LiveProfiles
from transforms.sources import ReadWholeEventFiles
from transforms.windows import AssignEventTime, HourlyWindowed

RUNNER = 'FnApiRunner (direct_num_workers=1)'


class LiveOutputs(typing.NamedTuple):
  events: beam.PCollection      # unique event records
  hourly: beam.PCollection      # hourly activity rows (event-time windows)
  documents: beam.PCollection   # (customer_id, document or None)
  triggers: beam.PCollection    # cart-abandonment records
  popularity: beam.PCollection  # (product_id, popularity document)


def live_graph(events: beam.PCollection, settings: GraphSettings) -> LiveOutputs:
  """The streaming branch of `pipeline.graph.build_outputs` after parsing, under its step
  labels: one place to adapt when the live composites change. No warehouse look-up in the
  dedupe (BigQuery) and no popularity source for the fold (Firestore): the bench reads files
  only."""
  unique = events | 'DedupeEvents' >> DedupeStream(settings.dedupe)
  hourly = (unique
            | 'AssignEventTime' >> AssignEventTime()
            | 'HourlyActivity' >> HourlyWindowed(settings.hourly))
  profiles = unique | 'BuildProfiles' >> LiveProfiles(settings.profile, settings.live,
                                                       settings.reference)
  return LiveOutputs(unique, hourly, profiles.documents, profiles.triggers, profiles.popularity)


def run_live(path: pathlib.Path, customers_path: pathlib.Path, catalog_path: pathlib.Path,
             out: pathlib.Path) -> None:
  """The live side, with the sinks of `bench.throughput` (plus popularity documents)."""
  options = throughput.graph_options(path, customers_path, catalog_path)
  settings = options.view_as(PersonalizationOptions).graph_settings()
  with beam.Pipeline(options=options) as p:
    parsed = (p
              | 'ReadEvents' >> ReadWholeEventFiles(settings.sources.files)
              | 'ParseEvents' >> ParseEvents(settings.parse))
    live = live_graph(parsed.events, settings)
    # The hourly rows are in their hour's window; the line blocks of the sinks are global.
    hourly = live.hourly | 'GlobalWindow[hourly]' >> beam.WindowInto(GlobalWindows())
    throughput.write_lines(out, (('events', live.events, throughput.event_line),
                                 ('dead_letter', parsed.dead_letter, throughput.dead_letter_line),
                                 ('hourly', hourly, throughput.hourly_line),
                                 ('documents', live.documents, throughput.document_line),
                                 ('triggers', live.triggers, throughput.trigger_line),
                                 ('popularity', live.popularity, throughput.document_line)))


def produced(out: pathlib.Path) -> dict:
  """What a side wrote: record counts, and for documents also the distinct customers."""
  documents = collections.Counter(d['id'] for d in throughput._records(out, 'documents'))
  counts = {name: sum(1 for _ in throughput._records(out, name))
            for name in ('events', 'dead_letter', 'hourly', 'triggers')}
  counts['documents'] = sum(documents.values())
  counts['customers'] = len(documents)
  popularity = [d['document']['customers'] for d in throughput._records(out, 'popularity')]
  counts['popularity'] = len(popularity)
  counts['popularity_nonzero'] = sum(1 for c in popularity if c)
  return counts


def same_work(live_out: pathlib.Path, batch_out: pathlib.Path) -> dict:
  """Which outputs both sides agree on: the same unique events, dead letters and hourly rows (as
  sorted digests, processing times excluded) and documents for the same customers; and whether
  the live popularity documents exist and are all keyed by products. Document contents differ by
  design: the live fold renders at processing time, without popularity."""
  fingerprints = (throughput.outputs_fingerprint(live_out),
                  throughput.outputs_fingerprint(batch_out))
  customers = [{d['id'] for d in throughput._records(out, 'documents')}
               for out in (live_out, batch_out)]
  # Popularity is keyed by product: a customer id there is a timer that reached the wrong DoFn.
  products = {d['id'] for d in throughput._records(live_out, 'popularity')}
  return {name: fingerprints[0][name] == fingerprints[1][name]
          for name in ('events', 'dead_letters', 'hourly')} | {
              'document_customers': customers[0] == customers[1],
              'popularity_keyed_by_product': bool(products) and not products & customers[1]}


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def constant_state_weights() -> None:
  """Diagnostic (`--constant_state_weights`), not what a worker runs: the SDK harness's state
  cache weighs every value it caches with `objsize`, which by default also walks the globals of
  every loaded module on each call; this gives every value one fixed weight instead, in this
  process, to show what that sizing costs. Affects both sides."""
  statecache.get_deep_size = lambda *objs: 1024


def _side(side: str, path: pathlib.Path, out: pathlib.Path, constant_weights: bool,
          results) -> None:
  """One side, in a fresh process: (wall seconds, CPU seconds, peak MiB)."""
  if constant_weights:
    constant_state_weights()
  shutil.rmtree(out, ignore_errors=True)
  customers, catalog = path.parent / 'customers.csv', path.parent / 'catalog.csv'
  cpu, start = _cpu_seconds(), time.perf_counter()
  if side == 'live':
    run_live(path, customers, catalog, out)
  else:
    throughput.run_graph(path, customers, catalog, out)
  results.put((time.perf_counter() - start, _cpu_seconds() - cpu, throughput._peak_rss_mb()))


def _in_child(side: str, path: pathlib.Path, out: pathlib.Path, constant_weights: bool):
  """`_side` in a spawned process (own peak memory, no inherited heap); imports excluded."""
  context = multiprocessing.get_context('spawn')
  results = context.Queue()
  child = context.Process(
      target=_side, args=(side, path, out, constant_weights, results))
  child.start()
  while True:
    try:
      outcome = results.get(timeout=1)
      break
    except queue.Empty:
      if not child.is_alive():  # died before it could report (its traceback is on stderr)
        break
  child.join()
  if child.exitcode != 0:
    raise SystemExit(f'the {side} side failed (exit code {child.exitcode})')
  return outcome


def measure(events: int, repeat: int, seed: int, workdir: pathlib.Path,
            constant_weights: bool = False) -> dict:
  """Runs both sides `repeat` times, alternating; returns the figures and what each produced."""
  path, manifest = throughput.ensure_input(workdir, events, seed)
  lines = manifest['lines_total']
  runs = {'live': [], 'batch': []}
  for i in range(repeat):
    for side in ('live', 'batch'):
      runs[side].append(_in_child(side, path, workdir / f'out-{side}', constant_weights))
    print(f'run {i + 1}/{repeat}: live {lines / runs["live"][-1][0]:,.0f} events/s, '
          f'batch {lines / runs["batch"][-1][0]:,.0f} events/s', file=sys.stderr)
  result = {'events': lines, 'repeat': repeat, 'runner': RUNNER,
            'python': platform.python_version(), 'beam': beam.__version__,
            'constant_state_weights': constant_weights}
  for side, measured in runs.items():
    result[f'{side}_events_per_s'] = round(lines / statistics.median(m[0] for m in measured))
    result[f'{side}_events_per_cpu_s'] = round(lines / statistics.median(m[1] for m in measured))
    result[f'{side}_peak_rss_mb'] = max(m[2] for m in measured)
    result[f'{side}_seconds'] = [round(m[0], 2) for m in measured]
    result[f'{side}_cpu_seconds'] = [round(m[1], 2) for m in measured]
    result[f'{side}_produced'] = produced(workdir / f'out-{side}')
  result['ratio'] = round(result['live_events_per_s'] / result['batch_events_per_s'], 3)
  result['ratio_cpu'] = round(result['live_events_per_cpu_s'] / result['batch_events_per_cpu_s'],
                              3)
  result['agree'] = same_work(workdir / 'out-live', workdir / 'out-batch')
  result['expected'] = {'events': manifest['valid_unique'],
                        'dead_letter': manifest['malformed'] + manifest['invalid'],
                        'customers': manifest['user_ids']}
  return result


def problems(result: dict) -> list[str]:
  """Disagreements between the sides, or with the generator's manifest."""
  found = [f'the sides differ in {name}' for name, same in result['agree'].items()
           if not same and name != 'popularity_keyed_by_product']
  if not result['agree']['popularity_keyed_by_product']:
    found.append(f'live: {result["live_produced"]["popularity"]:,} popularity documents, not all '
                 'keyed by a product (none, or some by a customer id)')
  for side in ('live', 'batch'):
    for name, expected in result['expected'].items():
      got = result[f'{side}_produced'][name]
      if got != expected:
        found.append(f'{side}: {got:,} {name}, the manifest says {expected:,}')
  return found


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--events', type=int, default=100_000)
  parser.add_argument('--repeat', type=int, default=3)
  parser.add_argument('--seed', type=int, default=42)
  parser.add_argument('--workdir', default='bench/results')
  parser.add_argument('--constant_state_weights', action='store_true',
                      help='Diagnostic: replace the SDK harness state cache\'s objsize sizing '
                           'of cached values by a constant weight (not what a worker runs).')
  args = parser.parse_args(argv)
  workdir = pathlib.Path(args.workdir)
  result = measure(args.events, args.repeat, args.seed, workdir, args.constant_state_weights)
  found = problems(result)
  result['problems'] = found
  suffix = '-constant-weights' if args.constant_state_weights else ''
  (workdir / f'live-{result["events"]}{suffix}.json').write_text(
      json.dumps(result, indent=2) + '\n')
  live, batch = result['live_produced'], result['batch_produced']
  print(f'{result["events"]:,} events on the {RUNNER}, median of {args.repeat}: '
        f'live {result["live_events_per_s"]:,} events/s ({result["live_events_per_cpu_s"]:,} per '
        f'CPU-second), batch {result["batch_events_per_s"]:,} events/s '
        f'({result["batch_events_per_cpu_s"]:,} per CPU-second), ratio live/batch '
        f'{result["ratio"]:.3f} (CPU {result["ratio_cpu"]:.3f}); peak memory (own process each): '
        f'live {result["live_peak_rss_mb"]:,.0f} MiB, batch {result["batch_peak_rss_mb"]:,.0f} MiB')
  print(f'produced: live {live["events"]:,} events, {live["dead_letter"]:,} dead letters, '
        f'{live["hourly"]:,} hourly rows, {live["documents"]:,} documents for '
        f'{live["customers"]:,} customers, {live["triggers"]:,} triggers, '
        f'{live["popularity"]:,} popularity documents ({live["popularity_nonzero"]:,} non-zero); '
        f'batch {batch["events"]:,} events, {batch["dead_letter"]:,} dead letters, '
        f'{batch["hourly"]:,} hourly rows, {batch["documents"]:,} documents for '
        f'{batch["customers"]:,} customers, {batch["triggers"]:,} triggers')
  if found:
    print('MISMATCH: ' + '; '.join(found))
    return 1
  print('both sides kept the same events, dead letters and hourly rows, and wrote documents for '
        'the same customers (live: one per customer from the flush timer plus one per changed '
        'cart from the abandonment timer, all fired at the end of the bundle)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
