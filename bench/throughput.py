"""Batch throughput: the graph against a plain-Python loop doing the same work, in one run.

    python -m bench.throughput [--events 100000] [--repeat 3] [--workdir bench/results]
                               [--audiences audiences.example.yaml]

Both sides read the same generated NDJSON.gz file, CRM export and catalog, and do the same work:
parse and validate every line (transforms.rules.events.parse_event), dead-letter failures,
deduplicate by message id, count activity per customer, event name and hour, stitch anonymous
events to customers, count product popularity, fold and render a document per customer (CRM and
catalog enrichment, recommendations, consent), derive cart triggers, and serialise events, dead
letters, hourly rows, documents and triggers as JSON lines to local files. The graph is
`pipeline.graph.build_outputs` (the production graph minus its cloud sinks) with file sinks
(WriteToText of line blocks per bundle), on the FnApiRunner. Each side runs in its own process.
The benchmark checks that both sides produce the same events, dead letters, hourly rows,
documents and triggers, then prints events/s (median of --repeat runs), the ratio and each
side's peak memory. With --audiences, every run also does both sides again with the definitions
file (computed traits and audiences in every document, the same library on both sides), and the
benchmark prints that ratio and what the definitions add per event on each side.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import multiprocessing
import pathlib
import platform
import resource
import shutil
import statistics
import sys
import time

import apache_beam as beam
import orjson
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.window import GlobalWindows

import schemas
from pipeline import graph
from pipeline.options import PersonalizationOptions
from scripts import generate_data
from transforms.rules.audiences import definitions
from transforms.rules.audiences.evaluate import Evaluator
from transforms import reference_data
from transforms.dedupe import preference_key
from transforms.rules import activity, dead_letters, events, identity, profile, reference, serving
from transforms.sources import file_source
from transforms.windows import HOUR_MICROS


def _json_default(value):
  if hasattr(value, 'isoformat'):
    return value.isoformat()
  raise TypeError(type(value).__name__)


def event_line(event: dict) -> bytes:
  return orjson.dumps(schemas.to_bigquery_row('events', event))


def dead_letter_line(record: dict) -> bytes:
  return orjson.dumps(schemas.to_bigquery_row('dead_letter', record))


def hourly_line(row: dict) -> bytes:
  return orjson.dumps(schemas.to_bigquery_row('customer_activity_hourly', row))


def trigger_line(record: dict) -> bytes:
  return orjson.dumps(schemas.to_bigquery_row('cart_triggers', record))


def document_line(pair) -> bytes:
  customer_id, document = pair
  return orjson.dumps({'id': customer_id, 'document': document}, default=_json_default)


def _write_lines(path: pathlib.Path, lines) -> None:
  """One line at a time: a list of every line first would hold each bytes object orjson returns,
  and each keeps its whole output buffer (docs/PERFORMANCE.md, "orjson's output buffers")."""
  with open(path, 'wb') as out:
    for line in lines:
      out.write(line)
      out.write(b'\n')


def ensure_input(workdir: pathlib.Path, count: int, seed: int) -> tuple[pathlib.Path, dict]:
  """The generated input (one gz file), reused when a previous run made the same one."""
  data = workdir / f'data-{count}-seed{seed}'
  manifest_path = data / 'manifest.json'
  if manifest_path.exists():
    manifest = json.loads(manifest_path.read_text())
  else:
    print(f'generating {count:,} events into {data} ...', file=sys.stderr)
    manifest = generate_data.generate(data, customers=max(100, count // 25), products=500,
                                      events=count, seed=seed, files=1)
  return data / manifest['files'][0], manifest


def reference_loop(path: pathlib.Path, customers_path: pathlib.Path,
                   catalog_path: pathlib.Path, out: pathlib.Path,
                   audiences: str | None = None) -> dict:
  """The same work as the graph, written as a plain loop."""
  evaluator = Evaluator(definitions.load(audiences)) if audiences else None
  customers = reference_data.read_records(str(customers_path), reference.parse_customer)
  catalog = reference_data.read_records(str(catalog_path), reference.parse_product)
  source = file_source(str(path))
  kept: dict[str, dict] = {}
  dead = []
  read = 0
  with gzip.open(path, 'rb') as lines:
    for line in lines:
      line = line.rstrip(b'\r\n')
      if not line.strip():
        continue
      read += 1
      now = time.time_ns() // 1000
      result = events.parse_event(line, source, now)
      if isinstance(result, dead_letters.Rejection):
        dead.append(dead_letters.dead_letter(result.failure_type, result.message, 'ParseEvents',
                                             line, source, now))
        continue
      previous = kept.get(result['message_id'])
      if previous is None or preference_key(result) < preference_key(previous):
        kept[result['message_id']] = result
  links: dict[str, tuple] = {}
  for event in kept.values():
    found = identity.link(event)
    if found is not None:
      anonymous_id, candidate = found
      if identity.wins(candidate, links.get(anonymous_id)):
        links[anonymous_id] = candidate
  linked = {anonymous_id: won[1] for anonymous_id, won in links.items()}
  by_customer: dict[str, list] = {}
  popular: dict[str, set] = {}
  hourly: dict[tuple, tuple] = {}
  newest = 0
  for event in kept.values():
    newest = max(newest, event['event_time'])
    customer = identity.customer_of(event, linked)
    if customer is not None:
      by_customer.setdefault(customer, []).append(event)
      for product_id in profile.interacted_products(event):
        popular.setdefault(product_id, set()).add(customer)
    key = activity.activity_key(event)
    if key is not None:
      hour = event['event_time'] - event['event_time'] % HOUR_MICROS
      hourly[(hour, key)] = activity.add(hourly.get((hour, key), (0, None)),
                                         (1, activity.revenue(event)))
  emitted = time.time_ns() // 1000
  hourly_rows = [{'window_start': hour, 'window_end': hour + HOUR_MICROS, 'customer_id': key[0],
                  'identified': key[1], 'event_name': key[2], 'event_count': count,
                  'revenue': revenue, 'currency': key[3] if revenue is not None else None,
                  'pane_index': 0, 'pane_timing': 'ON_TIME', 'emitted_at': emitted}
                 for (hour, key), (count, revenue) in hourly.items()]
  recommender = profile.Recommender(catalog, {pid: len(c) for pid, c in popular.items()})
  settings = profile.Settings(audiences=evaluator)
  documents, triggers = [], []
  for cid, evs in by_customer.items():
    document = profile.render(profile.fold(cid, evs, evaluator, catalog), newest,
                              customers.get(cid), catalog, recommender, settings)
    documents.append((cid, document))
    trigger = serving.cart_trigger(document, newest) if document is not None else None
    if trigger is not None:
      triggers.append(trigger)
  out.mkdir(parents=True, exist_ok=True)
  _write_lines(out / 'events.jsonl', map(event_line, kept.values()))
  _write_lines(out / 'dead_letter.jsonl', map(dead_letter_line, dead))
  _write_lines(out / 'hourly.jsonl', map(hourly_line, hourly_rows))
  _write_lines(out / 'documents.jsonl', map(document_line, documents))
  _write_lines(out / 'triggers.jsonl', map(trigger_line, triggers))
  return {'read': read, 'events': len(kept), 'dead_letters': len(dead),
          'documents': len(documents), 'hourly': len(hourly_rows), 'triggers': len(triggers)}


class _LineBlocksFn(beam.DoFn):
  """element -> blocks of JSON lines (about 4 MiB each, joined by newlines), one write per block.

  The sinks of the benchmark batch their lines per bundle: WriteToText's per-record path
  (windowing, then one write call per record) costs more per line than the serialisation itself
  on the FnApiRunner. BigQuery's and Firestore's sinks batch rows the same way inside Beam and the
  Google clients. Global window only (batch): blocks from `finish_bundle` carry it.
  """
  BLOCK_BYTES = 4 << 20

  def __init__(self, to_line):
    self._to_line = to_line

  def start_bundle(self):
    self._block = bytearray()

  def process(self, element):
    if self._block:
      self._block += b'\n'
    self._block += self._to_line(element)
    if len(self._block) >= self.BLOCK_BYTES:
      block, self._block = bytes(self._block), bytearray()
      yield block

  def finish_bundle(self):
    if self._block:
      block, self._block = bytes(self._block), bytearray()
      yield GlobalWindows.windowed_value(block)


def graph_options(path: pathlib.Path, customers_path: pathlib.Path, catalog_path: pathlib.Path,
                  audiences: str | None = None) -> PipelineOptions:
  """The benchmarks' options: the FnApiRunner with one worker, the input files."""
  options = PipelineOptions(flags=[], runner='FnApiRunner', direct_num_workers=1)
  opts = options.view_as(PersonalizationOptions)
  opts.audiences = audiences
  opts.events = str(path)
  opts.customers = str(customers_path)
  opts.catalog = str(catalog_path)
  return options


def write_lines(out: pathlib.Path, sinks) -> None:
  """`(name, pcoll, to_line)` triples -> JSON-lines files `out/<name>*.jsonl`, in line blocks."""
  out.mkdir(parents=True, exist_ok=True)
  for name, pcoll, to_line in sinks:
    _ = (pcoll
         | f'Serialise[{name}]' >> beam.ParDo(_LineBlocksFn(to_line))
         | f'Write[{name}]' >> beam.io.WriteToText(str(out / name), file_name_suffix='.jsonl',
                                                   coder=beam.coders.BytesCoder()))


def run_graph(path: pathlib.Path, customers_path: pathlib.Path, catalog_path: pathlib.Path,
              out: pathlib.Path, audiences: str | None = None) -> None:
  options = graph_options(path, customers_path, catalog_path, audiences)
  with beam.Pipeline(options=options) as p:
    outputs = graph.build_outputs(p, options.view_as(PersonalizationOptions))
    write_lines(out, (('events', outputs.events, event_line),
                      ('dead_letter', outputs.dead_letters, dead_letter_line),
                      ('hourly', outputs.hourly, hourly_line),
                      ('documents', outputs.documents, document_line),
                      ('triggers', outputs.triggers, trigger_line)))


def _records(out: pathlib.Path, name: str):
  for path in sorted(out.glob(f'{name}*.jsonl')):
    with open(path, 'rb') as lines:
      for line in lines:
        if line.strip():
          yield orjson.loads(line)


def _digests(records, drop: str | None = None) -> list[bytes]:
  """A sorted list of 16-byte digests of the records (as canonical JSON, without `drop`): equal
  lists mean equal multisets of records, in a fraction of the memory of the records themselves."""
  digests = []
  for record in records:
    if drop is not None:
      record.pop(drop, None)
    digests.append(hashlib.blake2b(orjson.dumps(record, option=orjson.OPT_SORT_KEYS),
                                   digest_size=16).digest())
  digests.sort()
  return digests


def outputs_fingerprint(out: pathlib.Path) -> dict:
  """What must be equal between the two sides (times of processing excluded)."""
  return {
      'triggers': _digests(_records(out, 'triggers')),
      'hourly': _digests(_records(out, 'hourly'), drop='emitted_at'),
      'events': _digests(_records(out, 'events'), drop='ingested_at'),
      'dead_letters': _digests({'failure_type': d['failure_type'], 'payload': d['payload']}
                               for d in _records(out, 'dead_letter')),
      'documents': _digests(_records(out, 'documents')),
  }


def _peak_rss_mb() -> float:
  """Peak resident memory of this process so far, MiB."""
  return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _side(side: str, path: pathlib.Path, out: pathlib.Path, results,
          audiences: str | None = None) -> None:
  """One side, in a fresh process (its own peak memory): (seconds, counts, peak MiB)."""
  shutil.rmtree(out, ignore_errors=True)
  customers, catalog = path.parent / 'customers.csv', path.parent / 'catalog.csv'
  start = time.perf_counter()
  if side == 'loop':
    counts = reference_loop(path, customers, catalog, out, audiences)
  else:
    counts = None
    run_graph(path, customers, catalog, out, audiences)
  results.put((time.perf_counter() - start, counts, _peak_rss_mb()))


def _in_child(side: str, path: pathlib.Path, out: pathlib.Path, audiences: str | None = None):
  """Runs `_side` in a spawned process: each side's peak memory is its own, and neither inherits
  the other's heap. The time is measured inside the child (imports excluded for both)."""
  context = multiprocessing.get_context('spawn')
  results = context.Queue()
  child = context.Process(target=_side, args=(side, path, out, results, audiences))
  child.start()
  outcome = results.get()
  child.join()
  if child.exitcode != 0:
    raise SystemExit(f'the {side} side failed (exit code {child.exitcode})')
  return outcome


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--events', type=int, default=100_000)
  parser.add_argument('--repeat', type=int, default=3)
  parser.add_argument('--seed', type=int, default=42)
  parser.add_argument('--workdir', default='bench/results')
  parser.add_argument('--audiences', default=None,
                      help='also run both sides with this definitions file (docs/AUDIENCES.md)')
  args = parser.parse_args(argv)
  if args.audiences:
    definitions.load(args.audiences)  # a bad file fails here, with its problems
  workdir = pathlib.Path(args.workdir)
  path, manifest = ensure_input(workdir, args.events, args.seed)
  lines = manifest['lines_total']

  loop_times, graph_times, loop_peaks, graph_peaks = [], [], [], []
  audience_loop, audience_graph, with_counts = [], [], None
  for i in range(args.repeat):
    seconds, counts, peak = _in_child('loop', path, workdir / 'out-loop')
    loop_times.append(seconds)
    loop_peaks.append(peak)
    seconds, _, peak = _in_child('graph', path, workdir / 'out-graph')
    graph_times.append(seconds)
    graph_peaks.append(peak)
    print(f'run {i + 1}/{args.repeat}: loop {lines / loop_times[-1]:,.0f} events/s, '
          f'graph {lines / graph_times[-1]:,.0f} events/s', file=sys.stderr)
    if args.audiences:
      seconds, with_counts, _ = _in_child('loop', path, workdir / 'out-loop-aud', args.audiences)
      audience_loop.append(seconds)
      seconds, _, _ = _in_child('graph', path, workdir / 'out-graph-aud', args.audiences)
      audience_graph.append(seconds)
      print(f'run {i + 1}/{args.repeat} with {args.audiences}: loop '
            f'{lines / audience_loop[-1]:,.0f} events/s, graph {lines / audience_graph[-1]:,.0f} '
            'events/s', file=sys.stderr)

  expected = {'read': lines, 'events': manifest['valid_unique'],
              'dead_letters': manifest['malformed'] + manifest['invalid'],
              'documents': manifest['user_ids'], 'hourly': counts['hourly'],
              'triggers': counts['triggers']}
  if counts != expected:
    print(f'FAIL: the loop produced {counts}, the manifest says {expected}', file=sys.stderr)
    return 1
  if outputs_fingerprint(workdir / 'out-loop') != outputs_fingerprint(workdir / 'out-graph'):
    print('FAIL: the graph and the loop produced different outputs', file=sys.stderr)
    return 1
  if args.audiences and (with_counts != counts or outputs_fingerprint(
      workdir / 'out-loop-aud') != outputs_fingerprint(workdir / 'out-graph-aud')):
    print('FAIL: with audiences, the graph and the loop produced different outputs',
          file=sys.stderr)
    return 1

  loop_rate = lines / statistics.median(loop_times)
  graph_rate = lines / statistics.median(graph_times)
  result = {
      'events': lines, 'repeat': args.repeat, 'runner': 'FnApiRunner (direct_num_workers=1)',
      'python': platform.python_version(), 'beam': beam.__version__,
      'loop_events_per_s': round(loop_rate), 'graph_events_per_s': round(graph_rate),
      'ratio': round(graph_rate / loop_rate, 3),
      'peak_rss_mb_loop': max(loop_peaks), 'peak_rss_mb_graph': max(graph_peaks),
      'loop_seconds': [round(t, 2) for t in loop_times],
      'graph_seconds': [round(t, 2) for t in graph_times],
  }
  if args.audiences:
    loop_with, graph_with = statistics.median(audience_loop), statistics.median(audience_graph)
    result.update({
        'audiences': args.audiences,
        'audiences_loop_events_per_s': round(lines / loop_with),
        'audiences_graph_events_per_s': round(lines / graph_with),
        'audiences_ratio': round(loop_with / graph_with, 3),
        'audiences_extra_us_per_event_loop': round(
            (loop_with - statistics.median(loop_times)) / lines * 1e6, 1),
        'audiences_extra_us_per_event_graph': round(
            (graph_with - statistics.median(graph_times)) / lines * 1e6, 1),
        'audiences_loop_seconds': [round(t, 2) for t in audience_loop],
        'audiences_graph_seconds': [round(t, 2) for t in audience_graph]})
  (workdir / f'throughput-{lines}.json').write_text(json.dumps(result, indent=2) + '\n')
  print(f'{lines:,} events, median of {args.repeat}: plain loop {loop_rate:,.0f} events/s, '
        f'graph {graph_rate:,.0f} events/s, ratio {graph_rate / loop_rate:.3f} '
        f'(outputs identical: {counts["events"]:,} events, {counts["dead_letters"]:,} dead '
        f'letters, {counts["hourly"]:,} hourly rows, {counts["documents"]:,} documents); '
        f'peak memory (own process each): loop {result["peak_rss_mb_loop"]:,.0f} MiB, graph '
        f'{result["peak_rss_mb_graph"]:,.0f} MiB')
  if args.audiences:
    print(f'with {args.audiences}, median of {args.repeat}: plain loop '
          f'{result["audiences_loop_events_per_s"]:,} events/s, graph '
          f'{result["audiences_graph_events_per_s"]:,} events/s, ratio '
          f'{result["audiences_ratio"]:.3f} (outputs identical); the definitions add '
          f'{result["audiences_extra_us_per_event_loop"]} us per event to the loop and '
          f'{result["audiences_extra_us_per_event_graph"]} us to the graph')
  return 0


if __name__ == '__main__':
  sys.exit(main())
