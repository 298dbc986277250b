"""`python -m connector.sync --config FILE`: the sync worker (docs/DESTINATIONS.md).

Reads profile changes from the config's subscription (connector/sync/pull.py), serves /healthz
and /metrics on `listen`, and stops after the batch in hand on SIGTERM or SIGINT, giving back
what it pulled but had not handled. Exit status 2 for a bad config, 1 when the subscription
cannot be read or goes away.
"""
from __future__ import annotations

import argparse
import http.server
import logging
import queue
import signal
import sys
import threading
import time

import httpx
import orjson
from google.api_core import exceptions as api_exceptions
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from connector import destinations, logs
from connector.config import ConfigError
from connector.sync import config as sync_config
from connector.sync.limiter import TokenBucket, Unlimited
from connector.sync.pull import Puller
from connector.sync.sender import Sender
from connector.sync.state import StateStore
from connector.sync.worker import Metrics, Worker

_log = logging.getLogger('connector.sync')
# /healthz fails when the loop has not come round for this long (it comes round every 0.5 s
# when idle; a batch that waits out a long Retry-After holds it, so be generous).
STALE_SECONDS = 300


def vendors(config: sync_config.SyncConfig) -> dict:
  """Each destination's vendor adapter; ConfigError for bad options or attribute names."""
  made = {}
  for destination in config.destinations:
    try:
      vendor = destinations.make(destination.type, dict(destination.options))
    except ValueError as err:
      raise ConfigError(f'destination {destination.name!r}: {err}') from err
    names = [a for _, a in destination.fields] + (
        [destination.attribute_of_audience('key')]
        if destination.audiences == sync_config.ALL_AUDIENCES else
        [destination.attribute_of_audience(k) for k in destination.audiences])
    for name in names:
      problem = vendor.attribute_problem(name)
      if problem:
        raise ConfigError(f'destination {destination.name!r}: attribute {name!r}: {problem}')
    made[destination.name] = vendor
  return made


class _Handler(http.server.BaseHTTPRequestHandler):
  worker: Worker
  metrics: Metrics

  def do_GET(self):  # noqa: N802 (the http.server name)
    if self.path == '/metrics':
      body, kind, status = generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST, 200
    elif self.path == '/healthz':
      age = time.monotonic() - self.worker.heartbeat
      status = 200 if age < STALE_SECONDS else 503
      body, kind = orjson.dumps({'status': 'ok' if status == 200 else 'stalled',
                                 'loop_age_seconds': round(age, 1)}), 'application/json'
    else:
      body, kind, status = b'{"error": "not found"}', 'application/json', 404
    self.send_response(status)
    self.send_header('Content-Type', kind)
    self.send_header('Content-Length', str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def log_message(self, *args):  # access logs would drown the worker's own
    pass


def _backfill(config, worker: Worker, name: str, store: StateStore, clients) -> int:
  from google.cloud import firestore  # honours FIRESTORE_EMULATOR_HOST
  destination = next(d for d in config.destinations if d.name == name)
  client = firestore.Client(project=config.project, database=config.database)
  documents = ((snapshot.id, snapshot.to_dict()) for snapshot in
               client.collection(config.documents_collection).stream())
  try:
    counts = worker.backfill(destination, documents)
  finally:
    worker.close()
    client.close()
    store.close()
    for client_ in clients.values():
      client_.close()
  print(f'backfill {name}: {counts["documents"]:,} documents read, '
        f'{counts["customers_incomplete"]:,} customers incomplete (retries ran out: run it again)')
  return 1 if counts['customers_incomplete'] else 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m connector.sync', description=__doc__)
  parser.add_argument('--config', required=True, help='the sync config file (YAML)')
  parser.add_argument('--backfill', metavar='DESTINATION', default=None,
                      help="send DESTINATION every mapped attribute of the stored documents "
                           "(documents_collection) it has not received, then exit; for a new "
                           "destination or a reset one (docs/DESTINATIONS.md, 'Operations')")
  args = parser.parse_args(argv)
  logs.configure()
  try:
    config = sync_config.load(args.config)
    adapters = vendors(config)
    if args.backfill is not None and args.backfill not in adapters:
      raise ConfigError(f'--backfill {args.backfill!r}: no such destination in {args.config} '
                        f'({", ".join(adapters)})')
  except ConfigError as err:
    print(f'error: {err}', file=sys.stderr)
    return 2

  from google.cloud import pubsub_v1  # honours PUBSUB_EMULATOR_HOST
  metrics = Metrics()
  limiters = {d.name: (TokenBucket(d.rate_limit.requests_per_second, d.rate_limit.burst)
                       if d.rate_limit else Unlimited()) for d in config.destinations}
  clients = {d.name: httpx.Client(timeout=d.timeout_seconds) for d in config.destinations}
  senders = {d.name: Sender(d, adapters[d.name], limiters[d.name], clients[d.name], metrics)
             for d in config.destinations}
  store = StateStore(config.project, config.database, config.state_collection)
  publisher = pubsub_v1.PublisherClient()
  worker = Worker(config, senders, store, publisher, metrics, limiters)
  if args.backfill is not None:
    return _backfill(config, worker, args.backfill, store, clients)

  _Handler.worker, _Handler.metrics = worker, metrics
  try:
    server = http.server.ThreadingHTTPServer(config.listen, _Handler)
  except OSError as err:
    print(f'error: cannot listen on {config.listen[0]}:{config.listen[1]}: {err.strerror}',
          file=sys.stderr)
    return 2
  threading.Thread(target=server.serve_forever, daemon=True, name='sync-http').start()

  subscriber = pubsub_v1.SubscriberClient()
  try:
    deadline = subscriber.get_subscription(subscription=config.subscription).ack_deadline_seconds
  except api_exceptions.GoogleAPICallError as err:
    print(f'error: cannot read the subscription {config.subscription}: {type(err).__name__}: '
          f'{str(err)[:300]}', file=sys.stderr)
    server.shutdown()
    return 1
  stop = threading.Event()
  puller = Puller(subscriber, config.subscription, worker.inbox, config.ack_deadline_seconds,
                  2 * config.max_batch, stop, subscription_deadline=deadline or 10)
  worker.on_batch_settled(puller.flush)
  metrics.oldest.set_function(lambda: puller.oldest_age(time.time()))
  puller.start()

  def on_signal(signum, _frame):
    _log.info('stopping after the batch in hand', extra={'signal': signum})
    stop.set()

  signal.signal(signal.SIGTERM, on_signal)
  signal.signal(signal.SIGINT, on_signal)
  _log.info('sync worker started', extra={
      'subscription': config.subscription, 'listen': f'{config.listen[0]}:{server.server_port}',
      'destinations': [f'{d.name} ({d.type})' for d in config.destinations]})
  try:
    worker.run(stop)
  finally:
    stop.set()
    while True:  # pulled but not handled: back to Pub/Sub now rather than at their deadline
      try:
        worker.inbox.get_nowait().nack()
      except queue.Empty:
        break
    puller.flush()
    worker.close()
    server.shutdown()
    store.close()
    for client in clients.values():
      client.close()
  _log.info('sync worker stopped')
  return 1 if puller.error is not None else 0


if __name__ == '__main__':
  sys.exit(main())
