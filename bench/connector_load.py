"""Connector latency under load: the send-time API at a fixed request rate, against the Firestore
emulator, with the /healthz endpoint at the same rate as the baseline measured in the same run.

    python -m bench.connector_load [--rate 500] [--seconds 20] [--customers 2000]

Starts its own local stack (scripts.localstack, temporary state dir), seeds serving documents,
starts `python -m connector` in a subprocess on a free port, then drives it with an open-loop
async aiohttp client: request i is due at start + i/rate, and its latency is measured from when it
was due (so a stalled server cannot hide queueing: no coordinated omission). Customer ids are
drawn uniformly from the seeded set plus 5% unknown ids (404s). A warm-up phase on other
customers comes first (the Java emulator's JIT makes its first seconds slow); the cache is cold
when the measured phase starts, so about a quarter of its requests read Firestore. Prints p50/p95/p99 and the
achieved rate per phase, and the p99 ratio against the baseline.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
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
import httpx
from google.cloud import firestore

from scripts import demo_connector, localstack

KEY = 'bench-key-0123456789abcdef'


def seed(project: str, collection: str, count: int) -> list[str]:
  db = firestore.Client(project=project)
  now = dt.datetime.now(dt.timezone.utc)
  ids = [f'c{i:06d}' for i in range(count)]
  for start in range(0, count, 500):
    batch = db.batch()
    for customer_id in ids[start:start + 500]:
      batch.set(db.collection(collection).document(customer_id), {
          'customer_id': customer_id, 'first_name': 'Ann', 'country': 'SE', 'language': 'sv',
          'loyalty_tier': 'gold', 'schema_version': 1, 'updated_at': now, 'last_event_at': now,
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
          'engagement': {'last_email_open_at': now, 'last_email_click_at': None}})
    batch.commit()
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

    async def one(i: int):
      nonlocal errors
      due = start + i / rate
      delay = due - time.perf_counter()
      if delay > 0:
        await asyncio.sleep(delay)
      try:
        async with session.get(paths[i % len(paths)]) as reply:
          await reply.read()
          statuses[reply.status] = statuses.get(reply.status, 0) + 1
      except (aiohttp.ClientError, asyncio.TimeoutError):
        errors += 1
        return
      latencies.append(time.perf_counter() - due)

    await asyncio.gather(*(one(i) for i in range(total)))
    elapsed = time.perf_counter() - start
  latencies.sort()

  def pct(q):
    return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2)

  return {'requests': total, 'achieved_rate': round(len(latencies) / elapsed, 1),
          'p50_ms': pct(0.50), 'p95_ms': pct(0.95), 'p99_ms': pct(0.99),
          'mean_ms': round(statistics.fmean(latencies) * 1000, 2), 'errors': errors,
          'statuses': statuses}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rate', type=float, default=500)
  parser.add_argument('--seconds', type=float, default=20)
  parser.add_argument('--customers', type=int, default=2000)
  parser.add_argument('--warmup_seconds', type=float, default=10)
  parser.add_argument('--warmup_customers', type=int, default=2000)
  parser.add_argument('--out', default='bench/results/connector-load.json')
  args = parser.parse_args(argv)
  project, collection = 'demo-local', 'customers'
  state_dir = pathlib.Path(tempfile.mkdtemp(prefix='bench-stack-'))
  # A SIGTERM (e.g. from `timeout`) must still stop what this run started.
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
  env = localstack.start(state_dir)
  server = None
  try:
    os.environ.update(env)
    all_ids = seed(project, collection, args.customers + args.warmup_customers)
    ids, warm_ids = all_ids[:args.customers], all_ids[args.customers:]
    port = demo_connector.free_port()
    server = subprocess.Popen(
        [sys.executable, '-m', 'connector'],
        env={**os.environ, 'CONNECTOR_PROJECT': project, 'CONNECTOR_COLLECTION': collection,
             'CONNECTOR_API_KEYS': KEY, 'CONNECTOR_PORT': str(port),
             'CONNECTOR_CACHE_TTL_SECONDS': '30'},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f'http://127.0.0.1:{port}'
    if not demo_connector.wait_ready(base, server):
      raise SystemExit('the connector did not become ready')
    rng = random.Random(7)
    picks = [rng.choice(ids) if rng.random() > 0.05 else f'unknown{rng.randrange(10**6)}'
             for _ in range(int(args.rate * args.seconds))]
    personalization = [f'/v1/customers/{i}/personalization' for i in picks]
    # Warm-up on other customers (so the measured phase starts with a cold cache): the Java
    # emulator and the server's clients reach steady state (JIT, connections) first.
    warm = [f'/v1/customers/{rng.choice(warm_ids)}/personalization'
            for _ in range(int(args.rate * args.warmup_seconds))]
    asyncio.run(drive(base, warm, args.rate, args.warmup_seconds))
    baseline = asyncio.run(drive(base, ['/healthz'], args.rate, args.seconds))
    measured = asyncio.run(drive(base, personalization, args.rate, args.seconds))
    metrics = httpx.get(base + '/metrics', headers={'Authorization': f'Bearer {KEY}'}).text
  finally:
    if server is not None:
      server.terminate()
      server.wait(timeout=10)
    localstack.stop(state_dir)
    shutil.rmtree(state_dir, ignore_errors=True)
  hits = sum(float(line.split()[-1]) for line in metrics.splitlines()
             if line.startswith('connector_cache_lookups_total{result="hit"}'))
  lookups = sum(float(line.split()[-1]) for line in metrics.splitlines()
                if line.startswith('connector_cache_lookups_total{'))
  result = {'rate': args.rate, 'seconds': args.seconds, 'customers': args.customers,
            'warmup_seconds': args.warmup_seconds,
            'baseline_healthz': baseline, 'personalization': measured,
            'cache_hit_ratio': round(hits / lookups, 3) if lookups else None,
            'p99_ratio_vs_baseline': round(measured['p99_ms'] / baseline['p99_ms'], 2)}
  pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + '\n')
  for name, phase in (('healthz (baseline)', baseline), ('personalization', measured)):
    print(f'{name:<20} {phase["achieved_rate"]:>7} req/s  p50 {phase["p50_ms"]} ms  '
          f'p95 {phase["p95_ms"]} ms  p99 {phase["p99_ms"]} ms  errors {phase["errors"]}  '
          f'statuses {phase["statuses"]}')
  print(f'cache hit ratio {result["cache_hit_ratio"]}; p99 personalization / healthz = '
        f'{result["p99_ratio_vs_baseline"]}')
  print('server-side latency (connector_request_seconds, all personalization requests incl. '
        'warm-up):')
  for line in metrics.splitlines():
    if line.startswith('connector_request_seconds_bucket{endpoint="/v1/customers'):
      print('  ' + line.split('le=')[1])
  return 0


if __name__ == '__main__':
  sys.exit(main())
