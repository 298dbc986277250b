"""Connector latency under load, Redis mode against Firestore-only mode, with /healthz as the
baseline, all measured in the same run.

    python -m bench.connector_load [--rate 1000] [--seconds 20] [--customers 20000]

Starts its own local stack (scripts.localstack, temporary state dir: the emulators and Redis),
writes serving documents through the pipeline's own Firestore writer with the Redis tier on
(`WriteDocuments(..., redis=...)`, so Redis holds exactly the entries the writer makes), starts
two `python -m connector` processes on free ports, one with CONNECTOR_REDIS_URL and one without,
and drives each in turn with an open-loop async aiohttp client: request i is due at
start + i/rate, and its latency is measured from when it was due (a stalled server cannot hide
queueing: no coordinated omission). Every measured request asks for a customer that connector
has never looked up (each id once), so Firestore mode reads Firestore for each and Redis mode
reads Redis. A warm-up phase on other customers comes first (the Java
emulator's JIT makes its first seconds slow). Prints p50/p95/p99 and the achieved rate per phase;
ids with no document are asked for apart, at 50 requests/s (both modes read Firestore for them).
The last line is `connector: redis p99 X ms, firestore p99 Y ms, healthz p99 Z ms at R req/s`.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import os
import pathlib
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import aiohttp
import apache_beam as beam
import httpx
import uvloop
from apache_beam.options.pipeline_options import PipelineOptions

from bench import procstat
from scripts import demo_connector, localstack
from transforms.settings import FirestoreLocation, RedisTier
from transforms.sinks.firestore import WriteDocuments

KEY = 'bench-key-0123456789abcdef'


def document(customer_id: str, now: dt.datetime) -> dict:
  return {
      'customer_id': customer_id, 'first_name': 'Ann', 'country': 'SE', 'language': 'sv',
      'loyalty_tier': 'gold', 'schema_version': 1, 'last_event_at': now,
      'recently_viewed': [{'product_id': f'p{j}', 'name': 'Product', 'category': 'Shoes',
                           'price': 10.0, 'url': 'u', 'image_url': 'i', 'viewed_at': now}
                          for j in range(10)],
      'cart': {'items': [{'product_id': 'p1', 'name': 'Product', 'price': 10.0,
                          'quantity': 1}], 'item_count': 1, 'value': 10.0,
               'currency': 'USD', 'updated_at': now, 'abandoned': False},
      'orders': {'count': 1, 'lifetime_value': 10.0, 'last_order_id': 'o1',
                 'last_order_at': now, 'currency': 'USD'},
      'segment': 'active', 'top_categories': ['Shoes'],
      'recommendations': [{'product_id': f'r{j}', 'name': 'R', 'price': 1.0, 'url': 'u',
                           'image_url': 'i', 'reason': 'popular now'} for j in range(4)],
      'engagement': {'last_email_open_at': now, 'last_email_click_at': None},
      'holdout': False, 'traits': {}, 'audiences': []}


def seed(project: str, collection: str, count: int, redis_url: str) -> list[str]:
  """`count` documents written by the pipeline's writer (FnApiRunner) to Firestore and Redis."""
  now = dt.datetime.now(dt.timezone.utc)
  ids = [f'c{i:06d}' for i in range(count)]
  with beam.Pipeline(runner='FnApiRunner', options=PipelineOptions(flags=[])) as p:
    _ = (p | beam.Create([(i, document(i, now)) for i in ids])
         | WriteDocuments(FirestoreLocation(project, collection), redis=RedisTier(redis_url)))
  return ids


async def drive(base: str, paths: list[str], rate: float, seconds: float) -> dict:
  """Open-loop load: request i is due at start + i/rate on one of 64 keep-alive connections.

  aiohttp rather than httpx for the client: at 500 requests/s httpx's own CPU cost on this 2-core
  machine (shared with the server) dominated the measurement; aiohttp's is several times lower.
  """
  total = int(rate * seconds)
  latencies: list[float] = []
  statuses: dict[int, int] = {}
  errors = 0
  connector = aiohttp.TCPConnector(limit=64)
  timeout = aiohttp.ClientTimeout(total=5)
  async with aiohttp.ClientSession(base, connector=connector, timeout=timeout,
                                   headers={'Authorization': f'Bearer {KEY}'}) as session:
    start = time.perf_counter() + 0.2

    async def one(i: int, due: float):
      nonlocal errors
      try:
        async with session.get(paths[i % len(paths)]) as reply:
          await reply.read()
          statuses[reply.status] = statuses.get(reply.status, 0) + 1
      except (aiohttp.ClientError, asyncio.TimeoutError):
        errors += 1
        return
      latencies.append(time.perf_counter() - due)

    # Each request is started at its due time by this loop (not 20,000 sleeping tasks made up
    # front, whose creation alone made the first requests late); a late start counts against
    # the server, since latency is measured from the due time.
    running = set()
    for i in range(total):
      due = start + i / rate
      delay = due - time.perf_counter()
      if delay > 0:
        await asyncio.sleep(delay)
      task = asyncio.create_task(one(i, due))
      running.add(task)
      task.add_done_callback(running.discard)
    await asyncio.gather(*running)
    elapsed = time.perf_counter() - start
  latencies.sort()

  def pct(q):
    return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2)

  return {'requests': total, 'achieved_rate': round(len(latencies) / elapsed, 1),
          'p50_ms': pct(0.50), 'p95_ms': pct(0.95), 'p99_ms': pct(0.99),
          'mean_ms': round(statistics.fmean(latencies) * 1000, 2), 'errors': errors,
          'statuses': statuses}


def measured(server: subprocess.Popen, base: str, paths: list[str], rate: float,
             seconds: float) -> dict:
  """One phase, with the share of a core the connector process used during it."""
  cpu, started = procstat.cpu_seconds(server.pid), time.perf_counter()
  result = asyncio.run(drive(base, paths, rate, seconds))
  result['server_cores'] = round((procstat.cpu_seconds(server.pid) - cpu)
                                 / (time.perf_counter() - started), 2)
  return result


def start_connector(project: str, collection: str, extra: dict) -> tuple[subprocess.Popen, str]:
  port = demo_connector.free_port()
  server = subprocess.Popen(
      [sys.executable, '-m', 'connector'],
      env={**os.environ, 'CONNECTOR_PROJECT': project, 'CONNECTOR_COLLECTION': collection,
           'CONNECTOR_API_KEYS': KEY, 'CONNECTOR_PORT': str(port), **extra},
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  base = f'http://127.0.0.1:{port}'
  if not demo_connector.wait_ready(base, server):
    raise SystemExit(f'the connector ({extra or "Firestore only"}) did not become ready')
  return server, base


def counter(metrics: str, prefix: str) -> float:
  return sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(prefix))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rate', type=float, default=1000)
  parser.add_argument('--seconds', type=float, default=20)
  parser.add_argument('--customers', type=int, default=None,
                      help='documents to serve (default: rate x seconds, each asked for once)')
  parser.add_argument('--warmup_seconds', type=float, default=5)
  parser.add_argument('--warmup_customers', type=int, default=2000)
  parser.add_argument('--unknown_ids', type=int, default=1000,
                      help='ids with no document, asked for after each mode\'s measured phase')
  parser.add_argument('--unknown_rate', type=float, default=50,
                      help='their rate: the share of unknown recipients in a send (5%% of 1000)')
  parser.add_argument('--out', default='bench/results/connector-load.json')
  args = parser.parse_args(argv)
  uvloop.install()  # the client's own loop costs less CPU, which it shares with the server
  total = int(args.rate * args.seconds)
  unknown = args.unknown_ids
  customers = args.customers or total
  project, collection = 'demo-local', 'customers'
  state_dir = pathlib.Path(tempfile.mkdtemp(prefix='bench-stack-'))
  # A SIGTERM (e.g. from `timeout`) must still stop what this run started.
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
  env = localstack.start(state_dir)
  servers = []
  try:
    os.environ.update(env)
    started = time.monotonic()
    all_ids = seed(project, collection, customers + args.warmup_customers, env['REDIS_URL'])
    print(f'seeded {len(all_ids):,} documents (Firestore and Redis, by the pipeline\'s writer) '
          f'in {time.monotonic() - started:.0f} s', flush=True)
    ids, warm_ids = all_ids[:customers], all_ids[customers:]
    rng = random.Random(7)
    order = rng.sample(ids, len(ids))
    # Each measured request a customer the connector has not looked up. Only customers with a
    # document: an id nobody wrote costs a Firestore read in both modes (Redis cannot know it
    # does not exist), measured apart below.
    picks = [order[i % len(order)] for i in range(total)]
    personalization = [f'/v1/customers/{i}/personalization' for i in picks]
    warm = [f'/v1/customers/{rng.choice(warm_ids)}/personalization'
            for _ in range(int(args.rate * args.warmup_seconds))]
    modes = {'redis': {'CONNECTOR_REDIS_URL': env['REDIS_URL']},
             'firestore': {'CONNECTOR_CACHE_TTL_SECONDS': '30'}}
    results, metrics = {}, {}
    # The seeding left many objects in this process: frozen, so the client's collections during
    # the measured phases do not scan them (a client pause would count as server latency).
    gc.collect()
    gc.freeze()
    for mode, extra in modes.items():
      server, base = start_connector(project, collection, extra)
      servers.append(server)
      asyncio.run(drive(base, warm, args.rate, args.warmup_seconds))
      if mode == 'redis':
        results['healthz'] = measured(server, base, ['/healthz'], args.rate, args.seconds)
      results[mode] = measured(server, base, personalization, args.rate, args.seconds)
      results[f'{mode}_unknown_ids'] = asyncio.run(drive(
          base, [f'/v1/customers/unknown-{mode}-{i}/personalization' for i in range(unknown)],
          args.unknown_rate, unknown / args.unknown_rate))
      metrics[mode] = httpx.get(base + '/metrics',
                                headers={'Authorization': f'Bearer {KEY}'}).text
      server.terminate()
      server.wait(timeout=10)
  finally:
    for server in servers:
      if server.poll() is None:
        server.terminate()
        server.wait(timeout=10)
    localstack.stop(state_dir)
    shutil.rmtree(state_dir, ignore_errors=True)
  redis_hits = counter(metrics['redis'], 'connector_redis_lookups_total{result="hit"}')
  redis_all = counter(metrics['redis'], 'connector_redis_lookups_total{')
  cache_hits = counter(metrics['firestore'], 'connector_cache_lookups_total{result="hit"}')
  cache_all = counter(metrics['firestore'], 'connector_cache_lookups_total{')
  result = {'rate': args.rate, 'seconds': args.seconds, 'customers': customers,
            'warmup_seconds': args.warmup_seconds, **results,
            'redis_hit_ratio': round(redis_hits / redis_all, 3) if redis_all else None,
            'firestore_mode_cache_hit_ratio': round(cache_hits / cache_all, 3) if cache_all
            else None,
            'p99_ratio_redis_vs_healthz': round(results['redis']['p99_ms']
                                                / results['healthz']['p99_ms'], 2),
            'p99_ratio_firestore_vs_healthz': round(results['firestore']['p99_ms']
                                                    / results['healthz']['p99_ms'], 2)}
  pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + '\n')
  for name in ('healthz', 'redis', 'firestore', 'redis_unknown_ids', 'firestore_unknown_ids'):
    phase = results[name]
    print(f'{name:<22} {phase["achieved_rate"]:>7} req/s  p50 {phase["p50_ms"]} ms  '
          f'p95 {phase["p95_ms"]} ms  p99 {phase["p99_ms"]} ms  errors {phase["errors"]}  '
          f'server {phase.get("server_cores", "-")} cores  '
          f'statuses {phase["statuses"]}')
  print(f'Redis hit ratio {result["redis_hit_ratio"]} (misses: the unknown ids); Firestore '
        f'mode cache hit ratio {result["firestore_mode_cache_hit_ratio"]} (warm-up included); '
        f'p99 / healthz: redis {result["p99_ratio_redis_vs_healthz"]}, firestore '
        f'{result["p99_ratio_firestore_vs_healthz"]}')
  print(f'connector: redis p99 {results["redis"]["p99_ms"]} ms, firestore p99 '
        f'{results["firestore"]["p99_ms"]} ms, healthz p99 {results["healthz"]["p99_ms"]} ms at '
        f'{args.rate:g} req/s')
  return 0


if __name__ == '__main__':
  sys.exit(main())
