"""Collector under load: `/v1/track` at a fixed request rate against `/healthz` at the same rate,
and `/v1/batch` at saturation against the Pub/Sub client alone, with every accepted event counted
on a subscription.

    python -m bench.collector_load [--rate 1000] [--seconds 20] [--batch_seconds 10]

Starts the Pub/Sub emulator of the local stack (scripts.localstack, temporary state dir; the
collector needs no other emulator), a topic with a subscription, and `python -m collector` in a
subprocess on a free port. The load comes from separate generator processes (--generators,
aiohttp on uvloop), never from the collector's process. Phases, in order:

1. warm-up: `/v1/track` at --rate for --warmup_seconds (the Java emulator's JIT, the client's
   connections);
2. baseline: `/healthz` at --rate (no auth, no body, no publish);
3. track: `/v1/track` at --rate, one ~350-byte Segment track event per request, each with its
   own messageId, Basic auth with a write key. Open loop: request i is due at start + i/rate and
   its latency counts from when it was due (a stalled server cannot hide queueing);
4. raw: a separate process publishes --raw_messages of the bytes the collector publishes (with
   the same attributes) to a second topic with BatchSettings(max_messages=1000,
   max_latency=0.01), and waits for every future: the client's own rate to this emulator;
5. batch: `/v1/batch` of --batch_size events, closed loop: --concurrency requests in flight,
   each sent as soon as the previous one was answered, for --batch_seconds after a short
   warm-up. Accepted events/s = events of 200 answers / time to the last answer.

After the track and the batch phases the subscription is drained: every event of a 200 answer
must be there (by its messageId, its data holding the same messageId), and the collector's
`collector_events_accepted_total` must equal the events of the 200 answers; the raw topic's
subscription must hold every message the raw publisher had confirmed. Any shortfall is listed
under `problems` and the exit status is 1. Prints p50/p95/p99, errors, achieved rates, the p99
ratio track/healthz and the ratio batch events/s over raw messages/s, with the cores each side
used; writes them to --out as JSON. Figures: docs/PERFORMANCE.md ("Collector").
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import datetime as dt
import gc
import json
import multiprocessing
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Iterable, Mapping

import aiohttp
import httpx
import orjson

from bench import procstat
from collector import events
from scripts import demo_connector, localstack, publish

PROJECT = 'demo-local'
KEY = 'bench-write-key-0123456789'
SOURCE = 'bench'
TOPIC, SUBSCRIPTION = 'collector-bench', 'collector-bench-count'
RAW_TOPIC, RAW_SUBSCRIPTION = 'collector-bench-raw', 'collector-bench-raw-count'
AUTH = {'Authorization': 'Basic ' + base64.b64encode(f'{KEY}:'.encode()).decode(),
        'Content-Type': 'application/json'}
REQUEST_TIMEOUT_SECONDS = 5
ID_MARK = '@@MESSAGE_ID@@'
ACCEPTED_PREFIX = f'collector_events_accepted_total{{source="{SOURCE}"}}'
PUBLISH_BUCKET = 'collector_publish_seconds_bucket{'


def track_event(message_id: str) -> dict:
  """A Segment track call as analytics-python sends it (~350 bytes as JSON)."""
  return {
      'type': 'track', 'event': 'Product Viewed', 'userId': 'c004211',
      'anonymousId': '5f0c2c1e-8d1a-4c5e-9b1e-2a7f3d9c6b10', 'messageId': message_id,
      'timestamp': '2026-12-01T10:15:30.123Z',
      'properties': {'product_id': 'p0421', 'name': 'Trail Running Shoe', 'category': 'Shoes',
                     'price': 89.95, 'currency': 'USD'},
      'context': {'library': {'name': 'analytics-python', 'version': '2.4.0'}}}


# Bodies are templates with the messageId spliced in: building one costs the generator next to
# nothing, so its CPU goes to HTTP.
_EVENT_TEMPLATE = orjson.dumps(track_event(ID_MARK)).decode()
_HEAD, _TAIL = _EVENT_TEMPLATE.split(ID_MARK)


def track_body(message_id: str) -> bytes:
  return f'{_HEAD}{message_id}{_TAIL}'.encode()


def batch_body(message_ids: Iterable[str]) -> bytes:
  joined = ','.join(f'{_HEAD}{i}{_TAIL}' for i in message_ids)
  return f'{{"batch":[{joined}],"sentAt":"2026-12-01T10:15:30.456Z"}}'.encode()


def track_id(prefix: str, i: int) -> str:
  return f'{prefix}{i:09d}'


def batch_ids(prefix: str, part: int, seq: int, size: int) -> list[str]:
  return [f'{prefix}{part}-{seq}-{j}' for j in range(size)]


# --------------------------------------------------------------------------------------------
# Load generators (each runs in a generator process of its own).


def _session(base: str) -> aiohttp.ClientSession:
  return aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(limit=64),
                               timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS),
                               headers=AUTH)


class _Tally:
  """What one part of a phase saw: latencies, statuses, failed requests (no answer), and the tag
  of each 200 (what the delivery check looks for)."""

  def __init__(self):
    self.latencies: list[float] = []
    self.statuses: dict[int, int] = collections.Counter()
    self.ok: list = []
    self.failures = 0

  async def send(self, request, since: float, tag) -> None:
    """Sends `request` (an aiohttp request, not yet awaited) and counts it; its latency runs
    from `since`."""
    try:
      async with request as reply:
        await reply.read()
    except (aiohttp.ClientError, asyncio.TimeoutError):
      self.failures += 1
      return
    self.latencies.append(time.monotonic() - since)
    self.statuses[reply.status] += 1
    if reply.status == 200:
      self.ok.append(tag)

  def result(self) -> dict:
    return {'latencies': self.latencies, 'statuses': dict(self.statuses),
            'failures': self.failures, 'ok': self.ok, 'end': time.monotonic()}


async def _open_loop(base: str, path: str, prefix: str | None, rate: float, seconds: float,
                     start: float, part: int, parts: int) -> dict:
  """Requests i = part, part + parts, ... of an open-loop run: request i is due at
  start + i/rate (time.monotonic, the same clock in every process) on one of 64 keep-alive
  connections; its latency counts from its due time. `prefix` None: GET `path` (no body)."""
  tally = _Tally()
  async with _session(base) as session:
    tasks = []
    for i in range(part, int(rate * seconds), parts):
      due = start + i / rate
      # Behind schedule, sleep(0) still lets answers in before the late requests go out.
      await asyncio.sleep(max(0.0, due - time.monotonic()))
      request = (session.get(path) if prefix is None
                 else session.post(path, data=track_body(track_id(prefix, i))))
      tasks.append(asyncio.create_task(tally.send(request, due, i)))
    await asyncio.gather(*tasks)
  return tally.result()


async def _closed_loop(base: str, prefix: str, size: int, concurrency: int, seconds: float,
                       start: float, part: int) -> dict:
  """`concurrency` loops, each posting a batch of `size` events as soon as its previous one
  was answered, from `start` for `seconds`."""
  tally = _Tally()
  counter = iter(range(1 << 62))
  delay = start - time.monotonic()
  if delay > 0:
    await asyncio.sleep(delay)
  end = start + seconds
  async with _session(base) as session:

    async def loop():
      while time.monotonic() < end:
        seq = next(counter)
        body = batch_body(batch_ids(prefix, part, seq, size))
        await tally.send(session.post('/v1/batch', data=body), time.monotonic(), (part, seq))

    await asyncio.gather(*(loop() for _ in range(concurrency)))
  return tally.result()


def _without_gc(coroutine) -> dict:
  """Runs one part of a phase with the generator's garbage collector off: a full collection
  over the phase's thousands of pending tasks stalled the generator for up to 80 ms, which the
  open loop then counted against the collector."""
  import uvloop
  used = time.process_time()
  gc.disable()
  try:
    return {**uvloop.run(coroutine), 'cpu_s': time.process_time() - used}
  finally:
    gc.enable()
    gc.collect()


def open_loop_part(kwargs: dict) -> dict:
  return _without_gc(_open_loop(**kwargs))


def closed_loop_part(kwargs: dict) -> dict:
  return _without_gc(_closed_loop(**kwargs))


def _generator_ready(_=None) -> int:
  return os.getpid()


def raw_publish(topic_path: str, count: int) -> dict:
  """The Pub/Sub client alone: `count` messages of the bytes and attributes the collector
  publishes for the track event, each with its own messageId, published as fast as the client
  takes them; returns once every future resolved. Runs in a process of its own."""
  from google.cloud import pubsub_v1

  stamp = events.Stamp(events.received_at(dt.datetime.now(dt.timezone.utc)), '127.0.0.1')
  template, _ = events.encode(track_event(ID_MARK), stamp)
  head, tail = template.split(ID_MARK.encode())
  ids = [track_id('r', i) for i in range(count)]
  messages = [(head + i.encode() + tail,
               {'source': SOURCE, 'received_at': stamp.received_at, 'message_id': i})
              for i in ids]
  client = pubsub_v1.PublisherClient(batch_settings=pubsub_v1.types.BatchSettings(
      max_messages=1000, max_latency=0.01))
  used, started = time.process_time(), time.perf_counter()
  futures = [client.publish(topic_path, data, **attributes) for data, attributes in messages]
  failed = 0
  for future in futures:
    try:
      future.result(timeout=120)
    except Exception:  # counted: the run reports how many the client did not confirm
      failed += 1
  elapsed = time.perf_counter() - started
  used = time.process_time() - used
  client.stop()
  return {'messages': count, 'failed': failed, 'seconds': round(elapsed, 3),
          'messages_per_s': round((count - failed) / elapsed, 1),
          'bytes_per_message': len(messages[0][0]), 'cpu_s': round(used, 2),
          'confirmed_ids': count - failed}


# --------------------------------------------------------------------------------------------
# Counting what reached Pub/Sub.


def drain(subscription: str, expect: int, quiet_seconds: float = 3.0) -> dict:
  """Pulls and acks the subscription until it is empty (once `expect` distinct messages were
  seen) or nothing arrived for `quiet_seconds`: per messageId attribute, how often it came, and
  the messageIds whose data did not hold the same messageId."""
  from google.api_core import exceptions
  from google.cloud import pubsub_v1

  seen: collections.Counter = collections.Counter()
  mismatched: list[str] = []
  with pubsub_v1.SubscriberClient() as subscriber:
    last = time.monotonic()
    while True:
      try:
        # Once all expected arrived, a short pull only looks for extras (an empty pull waits
        # for its deadline on the emulator).
        reply = subscriber.pull(subscription=subscription, max_messages=1000,
                                timeout=1 if len(seen) >= expect else 5)
        received = reply.received_messages
      except exceptions.DeadlineExceeded:
        received = []
      if not received:
        if len(seen) >= expect or time.monotonic() - last > quiet_seconds:
          break
        continue
      last = time.monotonic()
      for item in received:
        message_id = item.message.attributes.get('message_id', '')
        seen[message_id] += 1
        data = orjson.loads(item.message.data)
        if data.get('messageId') != message_id or 'receivedAt' not in data:
          mismatched.append(message_id)
      subscriber.acknowledge(subscription=subscription,
                             ack_ids=[item.ack_id for item in received])
  return {'seen': seen, 'mismatched': mismatched}


def check_delivery(what: str, confirmed: set[str], seen: Mapping[str, int],
                   mismatched: list[str], accepted_metric: float | None,
                   accepted_before: float = 0.0) -> tuple[dict, list[str]]:
  """Figures and problems of one phase: every confirmed id must have arrived (data matching),
  and the collector's accepted counter must have grown by exactly the confirmed events."""
  missing = confirmed.difference(seen)
  extra = set(seen).difference(confirmed)
  figures = {'confirmed': len(confirmed), 'delivered': len(confirmed) - len(missing),
             'missing': len(missing), 'delivered_unconfirmed': len(extra),
             'redelivered': sum(n - 1 for n in seen.values() if n > 1),
             'data_mismatch': len(mismatched)}
  problems = []
  if missing:
    problems.append(f'{what}: {len(missing)} of {len(confirmed)} confirmed events never reached '
                    f'the subscription, e.g. {sorted(missing)[:3]}')
  if mismatched:
    problems.append(f'{what}: {len(mismatched)} messages whose data does not hold their '
                    f'messageId, e.g. {mismatched[:3]}')
  if accepted_metric is not None:
    counted = accepted_metric - accepted_before
    figures['accepted_metric'] = counted
    if counted != len(confirmed):
      problems.append(f'{what}: collector_events_accepted_total grew by {counted:g}, the 200 '
                      f'answers carried {len(confirmed)} events')
  return figures, problems


def accepted_total(base: str) -> float:
  """The collector's collector_events_accepted_total for the bench source."""
  text = httpx.get(base + '/metrics', timeout=5).text
  return sum(float(line.split()[-1]) for line in text.splitlines()
             if line.startswith(ACCEPTED_PREFIX))


def publish_histogram(base: str) -> dict[str, float]:
  """The collector's own collector_publish_seconds buckets: upper bound -> cumulative count."""
  text = httpx.get(base + '/metrics', timeout=5).text
  return {line.split('le="')[1].split('"')[0]: float(line.split()[-1])
          for line in text.splitlines() if line.startswith(PUBLISH_BUCKET)}


def publish_waits(before: Mapping[str, float], after: Mapping[str, float]) -> dict:
  """Server side, between two readings: how many requests waited for Pub/Sub, and the share
  of them that waited over 10, 25 and 50 ms (where a tail comes from Pub/Sub, not HTTP)."""
  counts = {le: after[le] - before.get(le, 0.0) for le in after}
  total = counts.get('+Inf', 0.0)
  if not total:
    return {'publishes': 0}
  return {'publishes': int(total), **{f'over_{label}ms': round(1 - counts[le] / total, 4)
                                      for le, label in (('0.01', 10), ('0.025', 25),
                                                        ('0.05', 50)) if le in counts}}


# --------------------------------------------------------------------------------------------
# Figures.


def percentiles(latencies: list[float]) -> dict:
  if not latencies:
    return {'p50_ms': None, 'p95_ms': None, 'p99_ms': None, 'max_ms': None}
  ordered = sorted(latencies)

  def at(q):
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

  return {'p50_ms': at(0.50), 'p95_ms': at(0.95), 'p99_ms': at(0.99),
          'max_ms': round(ordered[-1] * 1000, 2)}


def merge(parts: list[dict], start: float) -> dict:
  latencies = [x for part in parts for x in part['latencies']]
  statuses: collections.Counter = collections.Counter()
  for part in parts:
    statuses.update(part['statuses'])
  elapsed = max(part['end'] for part in parts) - start
  answered = sum(statuses.values())
  return {'answered': answered, 'seconds': round(elapsed, 3),
          'achieved_rate': round(answered / elapsed, 1), **percentiles(latencies),
          'errors': sum(n for status, n in statuses.items() if status != 200)
          + sum(part['failures'] for part in parts),
          'failures': sum(part['failures'] for part in parts),
          'statuses': {str(k): v for k, v in sorted(statuses.items())},
          'generator_cpu_s': round(sum(part['cpu_s'] for part in parts), 2),
          'ok': [x for part in parts for x in part['ok']]}


class CpuMeter:
  """CPU seconds of the collector process and the emulator's process group, and of the whole
  machine, between two readings (from /proc)."""

  def __init__(self, collector_pid: int, emulator_pgid: int):
    self._collector, self._emulator = collector_pid, emulator_pgid

  def read(self) -> tuple[float, float, float, float]:
    emulator = sum(procstat.cpu_seconds(pid) for pid in localstack.group_members(self._emulator))
    return (procstat.cpu_seconds(self._collector), emulator, procstat.machine_busy_seconds(),
            time.monotonic())

  @staticmethod
  def cores(before, after, load_cpu_s: float) -> dict:
    """Cores used on average: the collector, the emulator, the load (generators or the raw
    publisher, from their own process times), the whole machine, and what was left of it for
    everything else (other users of the machine included)."""
    seconds = after[3] - before[3]
    used = {'collector': (after[0] - before[0]) / seconds,
            'emulator': (after[1] - before[1]) / seconds, 'load': load_cpu_s / seconds,
            'machine': (after[2] - before[2]) / seconds}
    used['other'] = used['machine'] - used['collector'] - used['emulator'] - used['load']
    return {name: round(value, 2) for name, value in used.items()}


# --------------------------------------------------------------------------------------------
# The run.


def machine_busy(seconds: float) -> float | None:
  """Cores the machine kept busy over `seconds` (before the run: other users' load)."""

  def busy():
    values = [int(v) for v in pathlib.Path('/proc/stat').read_text().split()[1:9]]
    return sum(values) - values[3] - values[4]

  if seconds <= 0:
    return None
  first = busy()
  time.sleep(seconds)
  return round((busy() - first) / os.sysconf('SC_CLK_TCK') / seconds, 2)


def start_pubsub(state_dir: pathlib.Path) -> tuple[dict[str, str], int]:
  """Only the Pub/Sub emulator of the local stack, recorded in `state_dir` like the others (so
  `localstack.stop` ends it): the Pub/Sub environment and the emulator's process group."""
  state_dir.mkdir(parents=True, exist_ok=True)
  with localstack.locked(state_dir):
    state = localstack.current_state(state_dir)
    localstack.launch_missing(state_dir, state, ['pubsub'], localstack.start_timeout())
  entry = state['components']['pubsub']
  return ({'PUBSUB_EMULATOR_HOST': localstack.endpoint('pubsub', entry['ports']),
           'PUBSUB_PROJECT_ID': state['project'], 'GOOGLE_CLOUD_PROJECT': state['project']},
          int(entry['pgid']))


def run_open(pool, generators: int, base: str, path: str, prefix: str | None, rate: float,
             seconds: float) -> dict:
  start = time.monotonic() + 0.5
  parts = pool.map(open_loop_part, [
      {'base': base, 'path': path, 'prefix': prefix, 'rate': rate, 'seconds': seconds,
       'start': start, 'part': k, 'parts': generators} for k in range(generators)], chunksize=1)
  return merge(parts, start)


def run_closed(pool, generators: int, base: str, prefix: str, size: int, concurrency: int,
               seconds: float) -> dict:
  start = time.monotonic() + 0.5
  share = [concurrency // generators + (k < concurrency % generators) for k in range(generators)]
  parts = pool.map(closed_loop_part, [
      {'base': base, 'prefix': prefix, 'size': size, 'concurrency': share[k],
       'seconds': seconds, 'start': start, 'part': k} for k in range(generators) if share[k]],
      chunksize=1)
  return merge(parts, start)


def _print_phase(name: str, phase: dict, unit: str = 'req/s') -> None:
  print(f'{name:<18} {phase["achieved_rate"]:>8} {unit}  p50 {phase["p50_ms"]} ms  '
        f'p95 {phase["p95_ms"]} ms  p99 {phase["p99_ms"]} ms  errors {phase["errors"]}  '
        f'statuses {phase["statuses"]}  cores {phase["cores"]}', flush=True)
  if phase['server_publish_waits']['publishes']:
    print(f'{"":<18} server side, waits for Pub/Sub: {phase["server_publish_waits"]}',
          flush=True)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rate', type=float, default=1000, help='track and healthz requests/s')
  parser.add_argument('--seconds', type=float, default=20, help='track and healthz phases')
  parser.add_argument('--warmup_seconds', type=float, default=10)
  parser.add_argument('--generators', type=int, default=1,
                      help='load generator processes (requests shared round-robin)')
  parser.add_argument('--batch_size', type=int, default=100, help='events per /v1/batch request')
  parser.add_argument('--concurrency', type=int, default=16,
                      help='/v1/batch requests in flight (closed loop)')
  parser.add_argument('--batch_seconds', type=float, default=10)
  parser.add_argument('--batch_warmup_seconds', type=float, default=3)
  parser.add_argument('--raw_messages', type=int, default=200_000,
                      help='messages the Pub/Sub client alone publishes')
  parser.add_argument('--collector_env', action='append', default=[], metavar='NAME=VALUE',
                      help='extra environment for the collector (repeatable)')
  parser.add_argument('--idle_check_seconds', type=float, default=2,
                      help='how long to sample the machine\'s load before starting (0: skip)')
  parser.add_argument('--out', default='bench/results/collector-load.json')
  args = parser.parse_args(argv)
  for name in ('rate', 'seconds', 'batch_seconds'):
    if getattr(args, name) <= 0:
      parser.error(f'--{name} must be positive')
  if args.generators < 1 or args.batch_size < 1 or args.concurrency < 1 or args.raw_messages < 1:
    parser.error('--generators, --batch_size, --concurrency and --raw_messages must be >= 1')
  extra_env = dict(item.split('=', 1) for item in args.collector_env)

  idle_check = {'busy_cores_before': machine_busy(args.idle_check_seconds),
                'load_average': os.getloadavg()[0]}
  print(f'before the run: {idle_check["busy_cores_before"]} of {os.cpu_count()} cores busy, '
        f'load average {idle_check["load_average"]:.2f}', flush=True)
  state_dir = pathlib.Path(tempfile.mkdtemp(prefix='bench-collector-'))
  # A SIGTERM (e.g. from `timeout`) must still stop what this run started.
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
  server = pool = None
  problems: list[str] = []
  try:
    env, emulator_pgid = start_pubsub(state_dir)
    os.environ.update(env)
    topic, subscription = publish.ensure_topic_and_subscription(PROJECT, TOPIC, SUBSCRIPTION)
    raw_topic, raw_subscription = publish.ensure_topic_and_subscription(
        PROJECT, RAW_TOPIC, RAW_SUBSCRIPTION)
    port = demo_connector.free_port()
    log_path = state_dir / 'collector.log'
    with open(log_path, 'wb') as log:
      server = subprocess.Popen(
          [sys.executable, '-m', 'collector'], stdout=log, stderr=subprocess.STDOUT,
          env={**os.environ, 'COLLECTOR_PROJECT': PROJECT, 'COLLECTOR_TOPIC': TOPIC,
               'COLLECTOR_WRITE_KEYS': f'{KEY}:{SOURCE}', 'COLLECTOR_PORT': str(port),
               **extra_env})
    base = f'http://127.0.0.1:{port}'
    if not demo_connector.wait_ready(base, server):
      raise SystemExit('the collector did not become ready:\n' + log_path.read_text()[-3000:])
    meter = CpuMeter(server.pid, emulator_pgid)
    context = multiprocessing.get_context('spawn')
    pool = context.Pool(args.generators, initializer=_generator_ready)
    pool.map(_generator_ready, range(args.generators), chunksize=1)

    def measured(run, *run_args):
      waits, before = publish_histogram(base), meter.read()
      phase = run(pool, args.generators, base, *run_args)
      phase['cores'] = CpuMeter.cores(before, meter.read(), phase['generator_cpu_s'])
      phase['server_publish_waits'] = publish_waits(waits, publish_histogram(base))
      return phase

    warm = measured(run_open, '/v1/track', 'w', args.rate, args.warmup_seconds)
    _print_phase('warm-up track', warm)
    baseline = measured(run_open, '/healthz', None, args.rate, args.seconds)
    _print_phase('healthz (baseline)', baseline)
    track = measured(run_open, '/v1/track', 't', args.rate, args.seconds)
    _print_phase('track', track)
    confirmed = ({track_id('w', i) for i in warm.pop('ok')}
                 | {track_id('t', i) for i in track.pop('ok')})
    baseline.pop('ok')
    counted = drain(subscription, len(confirmed))
    track['delivery'], found = check_delivery('track', confirmed, counted['seen'],
                                              counted['mismatched'], accepted_total(base))
    problems += found
    accepted_before = track['delivery']['accepted_metric']

    before = meter.read()
    with context.Pool(1) as raw_pool:
      raw = raw_pool.apply(raw_publish, (raw_topic, args.raw_messages))
    raw['cores'] = CpuMeter.cores(before, meter.read(), raw['cpu_s'])
    raw_confirmed = {track_id('r', i) for i in range(raw.pop('confirmed_ids'))}
    counted = drain(raw_subscription, len(raw_confirmed))
    raw['delivery'], found = check_delivery('raw', raw_confirmed, counted['seen'],
                                            counted['mismatched'], None)
    problems += found
    if raw['failed']:
      problems.append(f'raw: the client did not confirm {raw["failed"]} messages')
    print(f'raw publish        {raw["messages_per_s"]:>8} msg/s  ({raw["messages"]} messages of '
          f'{raw["bytes_per_message"]} bytes in {raw["seconds"]} s)  cores {raw["cores"]}',
          flush=True)

    batch_warm = measured(run_closed, 'v', args.batch_size, args.concurrency,
                          args.batch_warmup_seconds)
    batch = measured(run_closed, 'b', args.batch_size, args.concurrency, args.batch_seconds)
    confirmed = set()
    for prefix, phase in (('v', batch_warm), ('b', batch)):
      confirmed.update(message_id for part, seq in phase.pop('ok')
                       for message_id in batch_ids(prefix, part, seq, args.batch_size))
    batch['events_per_s'] = round(
        batch['statuses'].get('200', 0) * args.batch_size / batch['seconds'], 1)
    _print_phase('batch', batch)
    counted = drain(subscription, len(confirmed))
    batch['delivery'], found = check_delivery('batch', confirmed, counted['seen'],
                                              counted['mismatched'], accepted_total(base),
                                              accepted_before)
    problems += found
    if server.poll() is not None:
      problems.append(f'the collector exited with status {server.returncode}')
  finally:
    if pool is not None:
      pool.terminate()
      pool.join()
    if server is not None:
      server.terminate()
      try:
        server.wait(timeout=30)
      except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    localstack.stop(state_dir)
    shutil.rmtree(state_dir, ignore_errors=True)
  for name, phase in (('track', track), ('batch', batch)):
    if phase['errors']:
      problems.append(f'{name}: {phase["errors"]} errors (non-200 answers or failed requests)')
  result = {
      'rate': args.rate, 'seconds': args.seconds, 'warmup_seconds': args.warmup_seconds,
      'generators': args.generators, 'request_bytes': len(track_body(track_id('t', 0))),
      'batch_size': args.batch_size, 'concurrency': args.concurrency,
      'batch_seconds': args.batch_seconds, 'collector_env': extra_env, **idle_check,
      'warmup_track': warm, 'baseline_healthz': baseline, 'track': track, 'raw_publish': raw,
      'batch_warmup': batch_warm, 'batch': batch,
      'p99_ratio_track_vs_healthz': round(track['p99_ms'] / baseline['p99_ms'], 2),
      'batch_vs_raw_ratio': round(batch['events_per_s'] / raw['messages_per_s'], 3),
      'problems': problems}
  pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + '\n')
  print(f'p99 track / healthz = {result["p99_ratio_track_vs_healthz"]}; batch '
        f'{batch["events_per_s"]} events/s / raw {raw["messages_per_s"]} msg/s = '
        f'{result["batch_vs_raw_ratio"]}')
  print(f'delivery: track {track["delivery"]}; batch {batch["delivery"]}; raw {raw["delivery"]}')
  for problem in problems:
    print(f'PROBLEM: {problem}')
  return 1 if problems else 0


if __name__ == '__main__':
  sys.exit(main())
