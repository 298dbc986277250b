"""Sync worker at saturation: profile changes delivered per second to a local Braze receiver with
no rate limit, HTTP requests per 1,000 changes, against the receiver's own request rate alone;
then a short run with a rate limit, checked at the receiver.

    python -m bench.sync_load [--customers 20000] [--repeat 3] [--limit_rate 20 --limit_burst 5]

Starts the Pub/Sub and Firestore emulators of the local stack (scripts.localstack, temporary
state dir; stopped again on exit, Ctrl-C and failure included) and a strict BrazeReceiver
(tests/receivers/esp.py) in this process. Steps, in order:

1. baseline: a separate process POSTs valid 75-object bodies (built by the Braze adapter's own
   `requests()`) to the receiver as fast as it answers, one keep-alive httpx connection, for
   --baseline_seconds: the requests/s and items/s the receiver takes on its own.
2. saturation: --customers changes (four mapped fields and an audience enter or exit each, one
   per customer) are published to a fresh topic *before* `python -m connector.sync` starts on its
   subscription with `rate_limit: unlimited`, so the worker is the bottleneck. A run lasts from
   the worker's first /healthz answer (config read, clients made, about to subscribe) to the
   answer of the request that completed the receiver's set of those customers; changes/s =
   customers / that time. Every request the receiver saw in the run counts towards requests per
   1,000 changes (the ideal for Braze is 1000/75 = 13.3). A warm-up run (version 1, not counted:
   the Java emulators' JIT) comes first; the --repeat measured runs send versions 2, 3, ... of the
   same customers with new values, so each reads and rewrites 20,000 existing state documents and
   nothing is skipped as already delivered. The median is quoted.
3. rate limit: a fresh worker with {--limit_rate, --limit_burst} over enough customers for about
   --limit_seconds of requests of --limit_batch_size objects (small, so that the worker could go
   faster than the limit and the bucket binds); at the receiver, every interval [t_i, t_j] of
   request arrivals must hold at most burst + rate * (t_j - t_i + 20 ms) requests.

Each run checks that the receiver holds exactly the run's values for every customer, that the
worker acked every message and retried, refused and dead-lettered nothing; any shortfall is a
problem and the exit status is 1. `--iterable` adds a warm-up and a run to an IterableReceiver
(1,000 users per request) for comparison; `--profile FILE` adds one unmeasured run with py-spy
attached to the worker (raw collapsed stacks of every thread, idle time included, in FILE).
Progress goes to stderr; the last line is `sync: N changes/s, R requests per 1,000 changes, rate
limit held` (or `rate limit EXCEEDED`, exit status 1). Figures: docs/PERFORMANCE.md ("Sync
worker").
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Iterable, Sequence

import httpx
import orjson
import yaml

from bench import procstat
from connector import destinations
from scripts import demo_connector, localstack
from tests.receivers.esp import BrazeReceiver, IterableReceiver, Receiver
from transforms.rules import changes as profile_changes

PROJECT = 'demo-local'
ROOT = pathlib.Path(__file__).parents[1]
KEY = 'braze-bench-key-0123456789'
KEYS = {'braze': KEY, 'iterable': 'iterable-bench-key-0123456789'}
OK_STATUS = {'braze': 201, 'iterable': 200}  # what each receiver answers to an accepted request
FIELDS = {'segment': 'segment', 'orders.lifetime_value': 'lifetime_value',
          'traits.orders_90d': 'orders_90d', 'cart.item_count': 'cart_items'}
AUDIENCE = 'vip'
TIMING_SLACK_SECONDS = 0.02
RUN_TIMEOUT_SECONDS = 600


def progress(message: str) -> None:
  print(f'[bench-sync] {message}', file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# What is sent and what the receiver must hold (pure).


def change(customer: str, version: int) -> dict:
  """A profile change (schemas/profile_change.schema.json): four mapped fields whose values
  differ in every version, and the audience entered on odd versions, exited on even ones."""
  entered = version % 2 == 1
  return {'change_id': profile_changes.change_id(customer, version), 'customer_id': customer,
          'version': version, 'last_event_at': '2026-12-02T10:00:00+00:00',
          'written_at': '2026-12-02T10:00:01+00:00', 'deleted': False,
          'changed': {'segment': f'{customer}-v{version}', 'orders.lifetime_value': version * 10.5,
                      'traits.orders_90d': version, 'cart.item_count': version % 7},
          'audiences': {'entered': [AUDIENCE] if entered else [],
                        'exited': [] if entered else [AUDIENCE]}}


def expected(customer: str, version: int) -> dict:
  """The attributes a receiver holds for `customer` once `version` was delivered."""
  changed = change(customer, version)['changed']
  out = {attribute: changed[field] for field, attribute in FIELDS.items()}
  out[f'audience_{AUDIENCE}'] = version % 2 == 1
  return out


def customers(prefix: str, count: int) -> list[str]:
  return [f'{prefix}{i:06d}' for i in range(count)]


def rate_limit_violation(starts: Sequence[float], rate: float, burst: int,
                         slack: float = TIMING_SLACK_SECONDS) -> tuple[int, int, float] | None:
  """The worst interval of request start times breaking the token bucket's promise, as (i, j,
  excess requests), or None if every [t_i, t_j] holds at most burst + rate * (t_j - t_i + slack)
  requests. Linear: for each j the worst i is the one with the smallest i - rate * t_i so far
  (ties go to the latest: the shortest such interval)."""
  ordered = sorted(starts)
  worst = None
  best_i, best_key = 0, math.inf
  for j, t_j in enumerate(ordered):
    key = j - rate * t_j
    if key <= best_key + 1e-9:
      best_i, best_key = j, key
    t_i = ordered[best_i]
    excess = (j - best_i + 1) - (burst + rate * (t_j - t_i + slack))
    if excess > 1e-9 and (worst is None or excess > worst[2]):
      worst = (best_i, j, excess)
  return worst


def summary_line(changes_per_s: float, requests_per_1000: float, held: bool) -> str:
  """The benchmark's last line."""
  return (f'sync: {round(changes_per_s):,} changes/s, {requests_per_1000:.1f} requests per 1,000 '
          f'changes, rate limit {"held" if held else "EXCEEDED"}')


# --------------------------------------------------------------------------------------------
# The baseline: the receiver alone (runs in a process of its own, like the worker).


def baseline_bodies(count: int) -> list[bytes]:
  """`count` request bodies of 75 distinct customers each, as the Braze adapter builds them."""
  vendor = destinations.make('braze', {})
  items = [destinations.Item(c, expected(c, 1)) for c in customers('b', count * vendor.max_items)]
  requests = vendor.requests(items)
  assert all(len(r.items) == vendor.max_items for r in requests)
  return [r.body for r in requests]


def baseline_loop(base_url: str, seconds: float, warmup_seconds: float = 0.5) -> dict:
  """POSTs the bodies in turn on one keep-alive connection for `seconds` after a warm-up; every
  answer must be 201."""
  vendor = destinations.make('braze', {})
  bodies = baseline_bodies(40)
  headers = {**dict(vendor.requests([destinations.Item('x', {'a': 1})])[0].headers),
             **vendor.auth_headers(KEY)}
  statuses: dict[int, int] = {}
  with httpx.Client(base_url=base_url, limits=httpx.Limits(max_connections=1)) as client:
    end = time.monotonic() + warmup_seconds
    i = 0
    while time.monotonic() < end:
      client.post('/users/track', content=bodies[i % len(bodies)], headers=headers)
      i += 1
    cpu, started = time.process_time(), time.monotonic()
    end, sent = started + seconds, 0
    while time.monotonic() < end:
      reply = client.post('/users/track', content=bodies[sent % len(bodies)], headers=headers)
      statuses[reply.status_code] = statuses.get(reply.status_code, 0) + 1
      sent += 1
    elapsed = time.monotonic() - started
  return {'requests': sent, 'seconds': round(elapsed, 3), 'requests_per_s': sent / elapsed,
          'items_per_s': sent * vendor.max_items / elapsed, 'statuses': statuses,
          'client_cpu_s': round(time.process_time() - cpu, 2)}


# --------------------------------------------------------------------------------------------
# The local stack, CPU readings, publishing.


def start_stack(state_dir: pathlib.Path) -> dict[str, str]:
  """The Pub/Sub and Firestore emulators only, recorded in `state_dir` (so `localstack.stop`
  ends exactly them); their client environment."""
  state_dir.mkdir(parents=True, exist_ok=True)
  with localstack.locked(state_dir):
    state = localstack.current_state(state_dir)
    localstack.launch_missing(state_dir, state, ['pubsub', 'firestore'],
                              localstack.start_timeout())
  parts = state['components']
  return {'PUBSUB_EMULATOR_HOST': localstack.endpoint('pubsub', parts['pubsub']['ports']),
          'FIRESTORE_EMULATOR_HOST': localstack.endpoint('firestore', parts['firestore']['ports']),
          'PUBSUB_PROJECT_ID': state['project'], 'GOOGLE_CLOUD_PROJECT': state['project']}


class Cpu:
  """CPU seconds (from /proc) of the worker, each emulator's process group and this process
  (the receiver's threads), and the machine's busy time, between readings."""

  def __init__(self, state_dir: pathlib.Path):
    state = localstack.load_state(state_dir)
    self._groups = {name: int(entry['pgid']) for name, entry in state['components'].items()}

  def read(self, worker_pid: int | None) -> dict[str, float]:
    reading = {'worker': procstat.cpu_seconds(worker_pid) if worker_pid else 0.0,
               'receiver': procstat.cpu_seconds(os.getpid()),
               'machine': procstat.machine_busy_seconds(),
               'at': time.monotonic()}
    for name, pgid in self._groups.items():
      reading[name] = sum(procstat.cpu_seconds(p) for p in localstack.group_members(pgid))
    return reading

  @staticmethod
  def cores(before: dict, after: dict) -> dict[str, float]:
    """Cores used on average by each, and by everything else on the machine (`other`: other
    users' processes included; the machine has 2 cores)."""
    seconds = after['at'] - before['at']
    used = {name: (after[name] - before[name]) / seconds for name in before if name != 'at'}
    used['other'] = used['machine'] - sum(v for k, v in used.items() if k != 'machine')
    return {name: round(value, 2) for name, value in used.items()}


def make_topic(name: str) -> tuple[str, str]:
  from google.cloud import pubsub_v1
  topic = f'projects/{PROJECT}/topics/{name}'
  subscription = f'projects/{PROJECT}/subscriptions/{name}'
  pubsub_v1.PublisherClient().create_topic(name=topic)
  with pubsub_v1.SubscriberClient() as subscriber:
    subscriber.create_subscription(name=subscription, topic=topic, ack_deadline_seconds=60)
  return topic, subscription


def publish_changes(topic: str, ids: Iterable[str], version: int) -> float:
  """Publishes one change per customer and waits for every future; returns the seconds."""
  from google.cloud import pubsub_v1
  started = time.monotonic()
  publisher = pubsub_v1.PublisherClient(batch_settings=pubsub_v1.types.BatchSettings(
      max_messages=1000, max_latency=0.05))
  futures = []
  for customer in ids:
    body = change(customer, version)
    futures.append(publisher.publish(topic, orjson.dumps(body), change_id=body['change_id'],
                                     customer_id=customer))
  for future in futures:
    future.result(timeout=120)
  publisher.stop()
  return time.monotonic() - started


# --------------------------------------------------------------------------------------------
# One worker run.


@dataclasses.dataclass
class Settings:
  dead_letter_topic: str
  receivers: dict[str, Receiver]  # destination type -> its receiver
  state_dir: pathlib.Path
  cpu: Cpu
  py_spy: str | None = None


def key_env(kind: str) -> str:
  return f'SYNC_BENCH_{kind.upper()}_KEY'


def write_config(path: pathlib.Path, subscription: str, settings: Settings, port: int, kind: str,
                 rate_limit, options: dict) -> None:
  """The worker's config, one destination: the defaults (batch_seconds 1, max_batch 1000) but
  for the rate limit and the adapter's options."""
  path.write_text(yaml.safe_dump({
      'subscription': subscription, 'dead_letter_topic': settings.dead_letter_topic,
      'state_collection': 'sync_bench_state', 'listen': f'127.0.0.1:{port}',
      'destinations': [{'name': kind, 'type': kind, 'base_url': settings.receivers[kind].base_url,
                        'api_key_env': key_env(kind), 'fields': FIELDS, 'audiences': '*',
                        'rate_limit': rate_limit, 'options': options}]}))


def metric(text: str, name: str, **labels: str) -> float:
  """The sum of the samples of `name` (exposition name) with those labels in /metrics text."""
  return sum(float(line.rsplit(' ', 1)[1]) for line in text.splitlines()
             if (line.startswith(name + '{') or line.startswith(name + ' '))
             and all(f'{k}="{v}"' in line for k, v in labels.items()))


def completion(records, ids: set[str]) -> tuple[float, float]:
  """(first arrival, answer of the request that completed `ids`) among `records`."""
  left = set(ids)
  for record in sorted((r for r in records if r.finished is not None), key=lambda r: r.finished):
    left.difference_update(record.customer_ids)
    if not left:
      return min(r.arrived for r in records), record.finished
  raise AssertionError(f'{len(left)} customers never accepted')


def stop_process(process: subprocess.Popen, signum: int = signal.SIGTERM) -> None:
  """Signals a child this benchmark started and waits for it (SIGKILL after 30 s)."""
  if process.poll() is None:
    process.send_signal(signum)
    try:
      process.wait(timeout=30)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()


def wait_healthy(worker: subprocess.Popen, base: str, log_path: pathlib.Path) -> float:
  """Polls the worker's /healthz every 10 ms; the time of its first 200."""
  while True:
    if worker.poll() is not None:
      raise RuntimeError(f'the worker exited: {log_path.read_text()[-3000:]}')
    try:
      if httpx.get(base + '/healthz', timeout=1).status_code == 200:
        return time.monotonic()
    except httpx.TransportError:
      pass
    time.sleep(0.01)


def run_worker(settings: Settings, name: str, ids: list[str], version: int, rate_limit,
               options: dict | None = None, profile: pathlib.Path | None = None,
               kind: str = 'braze') -> dict:
  """Publishes the changes, starts a worker on them (one destination of type `kind`) and waits
  until its receiver holds every customer at `version`. Returns the run's figures and problems."""
  receiver = settings.receivers[kind]
  topic, subscription = make_topic(f'sync-bench-{name}')
  progress(f'{name}: publishing {len(ids):,} changes (version {version})')
  publish_seconds = publish_changes(topic, ids, version)
  port = demo_connector.free_port()
  config = settings.state_dir / f'{name}.yaml'
  write_config(config, subscription, settings, port, kind, rate_limit, options or {})
  log_path = settings.state_dir / f'{name}.log'
  first_record, log_start = len(receiver.recorded), len(receiver.accepted_log())
  spy = worker = None
  problems: list[str] = []
  try:
    with open(log_path, 'wb') as log:
      launched = time.monotonic()
      worker = subprocess.Popen(
          [sys.executable, '-m', 'connector.sync', '--config', str(config)], cwd=ROOT,
          env={**os.environ, **{key_env(k): v for k, v in KEYS.items()}}, stdout=log,
          stderr=subprocess.STDOUT)
    base = f'http://127.0.0.1:{port}'
    ready = wait_healthy(worker, base, log_path)
    before = settings.cpu.read(worker.pid)
    if profile is not None:
      with open(settings.state_dir / 'py-spy.log', 'wb') as spy_log:
        spy = subprocess.Popen([settings.py_spy, 'record', '--pid', str(worker.pid), '--rate',
                                '200', '--format', 'raw', '--nonblocking', '--threads', '--idle',
                                '--output', str(profile)], stdout=spy_log, stderr=spy_log)
    wanted, seen, shown = set(ids), set(), time.monotonic()
    while len(seen) < len(wanted):
      if worker.poll() is not None:
        raise RuntimeError(f'the worker exited: {log_path.read_text()[-3000:]}')
      if time.monotonic() - ready > RUN_TIMEOUT_SECONDS:
        raise RuntimeError(f'{len(wanted) - len(seen)} customers not delivered after '
                           f'{RUN_TIMEOUT_SECONDS} s')
      time.sleep(0.05)
      log_now = receiver.accepted_log()
      seen.update(c for c, _ in log_now[log_start:] if c in wanted)
      log_start = len(log_now)
      if time.monotonic() - shown > 2:
        progress(f'{name}: {len(seen):,} of {len(wanted):,} delivered')
        shown = time.monotonic()
    after = settings.cpu.read(worker.pid)
    # The batch is acknowledged (and counted) just after its last answer: wait for that.
    deadline = time.monotonic() + 10
    while True:
      metrics = httpx.get(base + '/metrics', timeout=5).text
      acked = metric(metrics, 'sync_messages_total', result='acked')
      if acked >= len(ids) or time.monotonic() > deadline:
        break
      time.sleep(0.05)
  finally:
    if spy is not None:
      stop_process(spy, signal.SIGINT)  # py-spy writes its output on SIGINT
    if worker is not None:
      stop_process(worker)
  if worker.returncode != 0:
    problems.append(f'{name}: the worker exited with status {worker.returncode}')
  records = receiver.recorded[first_record:]
  first, end = completion(records, set(ids))
  held = receiver.accepted()
  wrong = [c for c in ids if held.get(c) != expected(c, version)]
  if wrong:
    problems.append(f'{name}: {len(wrong)} customers hold other values, e.g. {wrong[0]}: '
                    f'{held.get(wrong[0])}')
  if acked < len(ids):
    problems.append(f'{name}: the worker acknowledged {acked:g} of {len(ids)} messages')
  for counter in ('sync_items_dead_lettered_total', 'sync_requests_retried_total',
                  'sync_items_failed_total'):
    if metric(metrics, counter):
      problems.append(f'{name}: {counter} = {metric(metrics, counter):g}')
  statuses = sorted({r.status for r in records})
  if statuses != [OK_STATUS[kind]]:
    problems.append(f'{name}: the receiver answered {statuses}')
  seconds = end - ready
  return {'name': name, 'destination': kind, 'customers': len(ids), 'version': version,
          'publish_seconds': round(publish_seconds, 2),
          'startup_seconds': round(ready - launched, 2), 'seconds': round(seconds, 3),
          'changes_per_s': len(ids) / seconds,
          'steady_changes_per_s': len(ids) / (end - first),
          'first_request_after_s': round(first - ready, 3), 'requests': len(records),
          'requests_per_1000': len(records) / len(ids) * 1000,
          'batches': metric(metrics, 'sync_batches_total'),
          'cores': Cpu.cores(before, after),
          'starts': [r.arrived for r in records], 'problems': problems}


def show_run(run: dict) -> None:
  print(f'{run["name"]:<18} {run["changes_per_s"]:>7,.0f} changes/s ({run["customers"]:,} in '
        f'{run["seconds"]:.2f} s; {run["steady_changes_per_s"]:,.0f}/s from the first request, '
        f'{run["first_request_after_s"]:.2f} s after ready)  {run["requests"]} requests '
        f'({run["requests_per_1000"]:.1f} per 1,000) in {run["batches"]:g} batches  cores '
        f'{run["cores"]}', flush=True)


# --------------------------------------------------------------------------------------------


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--customers', type=int, default=20_000,
                      help='changes per saturation run (one per customer)')
  parser.add_argument('--repeat', type=int, default=3, help='measured saturation runs')
  parser.add_argument('--baseline_seconds', type=float, default=5)
  parser.add_argument('--limit_rate', type=float, default=20, help='requests/s of the limited run')
  parser.add_argument('--limit_burst', type=int, default=5)
  parser.add_argument('--limit_seconds', type=float, default=3,
                      help='about how long the limited run sends requests')
  parser.add_argument('--limit_batch_size', type=int, default=10,
                      help='Braze objects per request in the limited run: at 75 the worker '
                      'sends fewer requests/s than the limit and the bucket never binds')
  parser.add_argument('--iterable', action='store_true',
                      help='also a warm-up and one measured run to an Iterable receiver (1,000 '
                      'users per request), for comparison')
  parser.add_argument('--profile', type=pathlib.Path, default=None,
                      help='also run once with py-spy attached, raw stacks to this file')
  parser.add_argument('--py_spy', default=shutil.which('py-spy'), help='the py-spy program')
  parser.add_argument('--out', default='bench/results/sync-load.json')
  args = parser.parse_args(argv)
  if args.customers < 1 or args.repeat < 1 or args.limit_burst < 1:
    parser.error('--customers, --repeat and --limit_burst must be >= 1')
  if not 1 <= args.limit_batch_size <= 75:
    parser.error('--limit_batch_size must be between 1 and 75')
  if args.baseline_seconds <= 0 or args.limit_rate <= 0 or args.limit_seconds <= 0:
    parser.error('--baseline_seconds, --limit_rate and --limit_seconds must be positive')
  if args.profile is not None and not args.py_spy:
    parser.error('--profile needs py-spy (pip install py-spy, or --py_spy PATH)')

  state_dir = pathlib.Path(tempfile.mkdtemp(prefix='bench-sync-'))
  # A SIGTERM (e.g. from `timeout`) must still stop what this run started.
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
  receivers: dict[str, Receiver] = {'braze': BrazeReceiver(KEYS['braze'])}
  if args.iterable:
    receivers['iterable'] = IterableReceiver(KEYS['iterable'])
  receiver = receivers['braze']
  iterable_run = None
  problems: list[str] = []
  try:
    progress(f'starting the Pub/Sub and Firestore emulators in {state_dir}')
    os.environ.update(start_stack(state_dir))
    for each in receivers.values():
      each.start()
    dead_topic, _ = make_topic('sync-bench-dead')
    settings = Settings(dead_topic, receivers, state_dir, Cpu(state_dir), args.py_spy)

    progress(f'baseline: the receiver alone for {args.baseline_seconds:g} s')
    before = settings.cpu.read(None)
    with multiprocessing.get_context('spawn').Pool(1) as pool:
      baseline = pool.apply(baseline_loop, (receiver.base_url, args.baseline_seconds))
    baseline['cores'] = Cpu.cores(before, settings.cpu.read(None))
    baseline['cores']['client'] = round(baseline['client_cpu_s'] / baseline['seconds'], 2)
    del baseline['cores']['worker']
    if set(baseline['statuses']) != {201}:
      problems.append(f'baseline: the receiver answered {baseline["statuses"]}')
    print(f'baseline     {baseline["requests_per_s"]:>7,.0f} requests/s = '
          f'{baseline["items_per_s"]:,.0f} items/s (75 per request, one keep-alive connection, '
          f'{baseline["requests"]:,} requests)  cores {baseline["cores"]}', flush=True)

    ids = customers('s', args.customers)
    runs = []
    for k in range(args.repeat + 1):
      run = run_worker(settings, 'warm-up' if k == 0 else f'run-{k}', ids, k + 1, 'unlimited')
      show_run(run)
      problems += run['problems']
      if k:
        runs.append(run)
    if args.iterable:
      for k in range(2):  # the same customers: a state-less warm-up, then a run over its state
        run = run_worker(settings, f'iterable-{"warm-up" if k == 0 else "run"}', ids, k + 1,
                         'unlimited', kind='iterable')
        show_run(run)
        problems += run['problems']
      iterable_run = run
    if args.profile is not None:
      args.profile.parent.mkdir(parents=True, exist_ok=True)
      profiled = run_worker(settings, 'profiled', ids, args.repeat + 2, 'unlimited',
                            profile=args.profile)
      show_run(profiled)
      problems += profiled['problems']
      print(f'py-spy stacks of the profiled run: {args.profile}', flush=True)

    # Enough customers for about limit_seconds of requests.
    limit_ids = customers('l', max(1, int(args.limit_rate * args.limit_seconds
                                          * args.limit_batch_size)))
    limited = run_worker(settings, 'rate-limit', limit_ids, 1,
                         {'requests_per_second': args.limit_rate, 'burst': args.limit_burst},
                         options={'batch_size': args.limit_batch_size})
    problems += limited['problems']
    starts = limited['starts']
    violation = rate_limit_violation(starts, args.limit_rate, args.limit_burst)
    span = max(starts) - min(starts)
    limited['achieved_requests_per_s'] = (len(starts) - 1) / span if span > 0 else None
    limited['violation'] = violation
    achieved = limited['achieved_requests_per_s'] or 0.0
    print(f'{"rate-limit":<18} {len(starts)} requests of {args.limit_batch_size} in {span:.2f} s = '
          f'{achieved:.1f}/s at a limit of {args.limit_rate:g}/s, burst {args.limit_burst}: '
          + ('held in every interval' if violation is None else
             f'EXCEEDED: requests {violation[0]}..{violation[1]} are {violation[2]:.2f} over')
          + ('' if achieved >= 0.8 * args.limit_rate else
             ' (the limit did not bind: the worker was slower than it, the check says little)'),
          flush=True)
  finally:
    for each in receivers.values():
      each.stop()
    localstack.stop(state_dir)
    shutil.rmtree(state_dir, ignore_errors=True)

  median = statistics.median(run['changes_per_s'] for run in runs)
  per_1000 = statistics.median(run['requests_per_1000'] for run in runs)
  ratio = median / baseline['items_per_s']
  result = {'customers': args.customers, 'repeat': args.repeat, 'baseline': baseline,
            'runs': [{k: v for k, v in run.items() if k != 'starts'} for run in runs],
            'median_changes_per_s': median, 'median_requests_per_1000': per_1000,
            'ideal_requests_per_1000': 1000 / 75, 'ratio_vs_baseline_items': ratio,
            'rate_limit': {k: v for k, v in limited.items() if k != 'starts'},
            'iterable': iterable_run and {k: v for k, v in iterable_run.items() if k != 'starts'},
            'problems': problems}
  pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + '\n')
  print(f'median of {len(runs)}: {median:,.0f} changes/s, {per_1000:.1f} requests per 1,000 '
        f'changes (ideal 13.3); the worker / the receiver alone = {median:,.0f} / '
        f'{baseline["items_per_s"]:,.0f} items/s = {ratio:.3f}')
  for problem in problems:
    print(f'PROBLEM: {problem}')
  print(summary_line(median, per_1000, violation is None))
  return 1 if problems or violation is not None else 0


if __name__ == '__main__':
  try:
    sys.exit(main())
  except KeyboardInterrupt:  # what it started is stopped by then (main's finally)
    progress('interrupted')
    sys.exit(130)
