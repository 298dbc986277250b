"""Real-time latency: from publishing an event to Pub/Sub to the customer's Firestore document
showing it, through the streaming pipeline on the BundleBasedDirectRunner and the emulators.

    python -m bench.stream_latency [--rates 200] [--seconds 30] [--customers 500]
    python -m bench.stream_latency --rates 50,100,200,300   # also finds the highest good rate

Starts its own local stack (scripts.localstack, temporary state dir), the streaming job as a
subprocess exactly as `make stream` does (`python -m pipeline.run --streaming ...`), and a
Firestore listener (`on_snapshot`) on the serving collection. Each phase publishes `Product
Viewed` events for identified customers at a fixed rate, open loop: event i is due at
start + i/rate and its `timestamp` is that due time (millisecond precision). An event is visible
when a snapshot of its customer's document shows `last_event_at` at or after its timestamp; its
latency is the time that snapshot reached the listener minus its due time (so publishing late or
slowly counts against the pipeline, never for it). Events never seen within --settle_seconds
after the phase count as lost and are reported (their latency is infinite in the percentiles);
the drained rate is how many events per second became visible, from the phase's start to the last
visible one.

A warm-up phase on other customers comes first (JIT of the Java emulators, the runner's first
bundles). Prints p50/p95/p99, the achieved publish rate and the highest rate whose p99 stayed
under --goal_ms; writes the figures to --out as JSON.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import threading
import time

import orjson
from google.cloud import firestore, pubsub_v1

from scripts import localstack, publish, stream

PROJECT = 'demo-local'


class Visibility:
  """Listener side: per customer, the (last_event_at, seen at) pairs in arrival order."""

  def __init__(self):
    self._lock = threading.Lock()
    self.seen: dict[str, list[tuple[dt.datetime, float]]] = {}
    self.snapshots = 0

  def on_snapshot(self, documents, changes, read_time):
    now = time.time()
    with self._lock:
      self.snapshots += 1
      for change in changes:
        data = change.document.to_dict() or {}
        at = data.get('last_event_at')
        if at is not None:
          self.seen.setdefault(change.document.id, []).append((at, now))

  def first_seen(self, customer_id: str, at: dt.datetime) -> float | None:
    with self._lock:
      for last_event_at, seen in self.seen.get(customer_id, ()):
        if last_event_at >= at:
          return seen
    return None


def event(message_id: str, customer_id: str, due: float, product: int) -> bytes:
  stamp = dt.datetime.fromtimestamp(round(due, 3), dt.timezone.utc)
  return orjson.dumps({
      'type': 'track', 'event': 'Product Viewed', 'messageId': message_id,
      'userId': customer_id, 'timestamp': stamp.isoformat(timespec='milliseconds')
      .replace('+00:00', 'Z'),
      'properties': {'product_id': f'p{product}', 'name': 'Product', 'price': 9.5,
                     'category': 'Shoes'}})


def run_phase(publisher, topic: str, name: str, customers: list[str], rate: float,
              seconds: float) -> tuple[list[tuple[str, dt.datetime, float]], float]:
  """Publishes rate*seconds events open-loop; returns (customer, event time, due) per event and
  the achieved publish rate."""
  total = int(rate * seconds)
  sent = []
  futures = []
  start = time.time() + 0.2
  for i in range(total):
    due = start + i / rate
    delay = due - time.time()
    if delay > 0:
      time.sleep(delay)
    customer = customers[i % len(customers)]
    futures.append(publisher.publish(topic, event(f'{name}-{i}', customer, due, i % 50)))
    sent.append((customer, dt.datetime.fromtimestamp(round(due, 3), dt.timezone.utc), due))
  for future in futures:
    future.result(timeout=60)
  return sent, total / (time.time() - start)


def percentiles(latencies: list[float]) -> dict:
  ordered = sorted(latencies)

  def pct(q):
    value = ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    return None if math.isinf(value) else round(value * 1000, 1)

  return {'p50_ms': pct(0.50), 'p95_ms': pct(0.95), 'p99_ms': pct(0.99),
          'max_ms': pct(1.0)}


def drained_rate(latencies: list[float], sent) -> float | None:
  """Events made visible per second of the phase, from its first due time to the last
  visible event: what the pipeline kept up with, whatever the publish rate."""
  seen = [due + latency for (_, _, due), latency in zip(sent, latencies) if not math.isinf(latency)]
  if len(seen) < 2:
    return None
  return round(len(seen) / (max(seen) - sent[0][2]), 1)


def measure(visibility: Visibility, sent, settle_seconds: float) -> tuple[list[float], int]:
  deadline = time.time() + settle_seconds
  while True:
    latencies = []
    lost = 0
    for customer, at, due in sent:
      seen = visibility.first_seen(customer, at)
      if seen is None:
        lost += 1
        latencies.append(math.inf)
      else:
        latencies.append(seen - due)
    if not lost or time.time() > deadline:
      return latencies, lost
    time.sleep(0.5)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rates', default='200',
                      help='comma-separated publish rates (events/s), one phase each, in order')
  parser.add_argument('--seconds', type=float, default=30, help='length of each phase')
  parser.add_argument('--customers', type=int, default=500)
  parser.add_argument('--warmup_seconds', type=float, default=15)
  parser.add_argument('--warmup_rate', type=float, default=50)
  parser.add_argument('--settle_seconds', type=float, default=20,
                      help='how long to wait after a phase for its last events to show')
  parser.add_argument('--goal_ms', type=float, default=1000)
  parser.add_argument('--pipeline_arg', action='append', default=[],
                      help='extra option for the pipeline (repeatable)')
  parser.add_argument('--out', default='bench/results/stream-latency.json')
  args = parser.parse_args(argv)
  rates = [float(rate) for rate in args.rates.split(',')]
  state_dir = pathlib.Path(tempfile.mkdtemp(prefix='bench-stream-'))
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
  env = localstack.start(state_dir)
  os.environ.update(env)
  pipeline = watch = None
  publisher = pubsub_v1.PublisherClient(
      batch_settings=pubsub_v1.types.BatchSettings(max_latency=0.002))
  results = []
  try:
    topic, subscription = publish.ensure_topic_and_subscription(
        PROJECT, 'latency-events', 'latency-pipeline')
    collection = 'latency-customers'
    visibility = Visibility()
    watch = firestore.Client(project=PROJECT).collection(collection).on_snapshot(
        visibility.on_snapshot)
    log_path = state_dir / 'pipeline.log'
    pipeline = stream.start_process(stream.pipeline_command(subscription, [
        '--dataset=latency', f'--collection={collection}',
        f'--popularity_collection={collection}-popularity', *args.pipeline_arg]), log_path)
    warm = [f'warm{i:05d}' for i in range(args.customers)]
    sent, _ = run_phase(publisher, topic, 'warm', warm, args.warmup_rate, args.warmup_seconds)
    latencies, lost = measure(visibility, sent, 120)
    if pipeline.poll() is not None:
      raise SystemExit('the pipeline exited during warm-up:\n' + log_path.read_text()[-3000:])
    print(f'warm-up       {args.warmup_rate:>6.0f}/s  {percentiles(latencies)}  lost {lost}',
          flush=True)
    for phase, rate in enumerate(rates):
      customers = [f'c{phase}-{i:05d}' for i in range(args.customers)]
      sent, achieved = run_phase(publisher, topic, f'p{phase}', customers, rate, args.seconds)
      latencies, lost = measure(visibility, sent, args.settle_seconds)
      figures = {'rate': rate, 'achieved_publish_rate': round(achieved, 1),
                 'events': len(sent), 'lost': lost,
                 'drained_rate': drained_rate(latencies, sent), **percentiles(latencies)}
      results.append(figures)
      print(f'rate {rate:>6.0f}/s  published {achieved:>6.1f}/s  p50 {figures["p50_ms"]} ms  '
            f'p95 {figures["p95_ms"]} ms  p99 {figures["p99_ms"]} ms  '
            f'max {figures["max_ms"]} ms  lost {lost}  drained {figures["drained_rate"]}/s',
            flush=True)
      if pipeline.poll() is not None:
        raise SystemExit('the pipeline exited:\n' + log_path.read_text()[-3000:])
      time.sleep(3)  # let the runner go idle between phases
  finally:
    if pipeline is not None:
      stream.stop_pipeline(pipeline, topic)
    if watch is not None:
      watch.unsubscribe()
    localstack.stop(state_dir)
    shutil.rmtree(state_dir, ignore_errors=True)
  good = [r['rate'] for r in results
          if not r['lost'] and r['p99_ms'] is not None and r['p99_ms'] < args.goal_ms]
  summary = {'phases': results, 'seconds': args.seconds, 'customers': args.customers,
             'goal_ms': args.goal_ms,
             'highest_rate_meeting_goal': max(good) if good else None}
  pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(args.out).write_text(json.dumps(summary, indent=2) + '\n')
  print(f'highest rate with p99 under {args.goal_ms:.0f} ms: '
        f'{summary["highest_rate_meeting_goal"]} events/s (of {rates})')
  return 0


if __name__ == '__main__':
  sys.exit(main())
