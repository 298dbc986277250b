"""The sync worker's loop: pull profile changes, coalesce a batch, deliver to every destination,
save what was delivered, dead-letter what was refused, then acknowledge.

A batch is the messages that arrive within `batch_seconds` of the first (at most `max_batch`).
Destinations are served in parallel, each by its own Sender, one request at a time. A message is
acknowledged only when every destination accepted or dead-lettered its items; when a
destination's retries run out, the batch's messages are nacked and come back, and the state makes
the other destinations send nothing again (at-least-once, idempotent payloads).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import queue
import threading
import time
from typing import Mapping

import fastjsonschema
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

import schemas
from connector.destinations import base
from transforms.rules import changes as profile_changes
from connector.sync import plan
from connector.sync.config import Destination, SyncConfig
from connector.sync.sender import Delivery, Failure, Sender

_log = logging.getLogger('connector.sync')


class Metrics:
  """The worker's Prometheus metrics, per destination where it matters."""

  def __init__(self, registry: CollectorRegistry | None = None):
    self.registry = registry or CollectorRegistry()
    r = self.registry
    self.sent = Counter('sync_items_sent', 'Items an ESP accepted', ['destination'], registry=r)
    self.failed = Counter('sync_items_failed', 'Items an ESP refused (partial or permanent)',
                          ['destination'], registry=r)
    self.dead = Counter('sync_items_dead_lettered', 'Items published to the dead-letter topic',
                        ['destination'], registry=r)
    self.retried = Counter('sync_requests_retried', 'Requests retried, by the status that caused '
                           'it (error: no answer)', ['destination', 'status'], registry=r)
    self.requests = Counter('sync_requests', 'Requests sent, by status', ['destination', 'status'],
                            registry=r)
    self.latency = Histogram('sync_request_seconds', 'ESP request latency', ['destination'],
                             buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10),
                             registry=r)
    self.rate = Gauge('sync_request_rate', 'Requests started per second over the last 10 s',
                      ['destination'], registry=r)
    self.skipped = Counter('sync_attributes_skipped', 'Attributes not sent: the ESP has the value '
                           '(unchanged) or a newer one (older)', ['destination', 'reason'],
                           registry=r)
    self.exhausted = Counter('sync_items_exhausted', 'Items whose retries ran out (their messages '
                             'are nacked and come back)', ['destination'], registry=r)
    self.messages = Counter('sync_messages', 'Pub/Sub messages by outcome (acked, nacked, '
                            'invalid)', ['result'], registry=r)
    self.deletions = Counter('sync_deletions_skipped', 'Changes that deleted a document (consent '
                             'withdrawn, erasure): nothing is sent', registry=r)
    self.batches = Counter('sync_batches', 'Batches handled', registry=r)
    # Set to read the puller's oldest_age at each scrape (connector/sync/__main__.py).
    self.oldest = Gauge('sync_oldest_message_age_seconds', 'Age (from its Pub/Sub publish time) '
                        'of the oldest profile change pulled and not yet acknowledged; 0 when '
                        'none is held', registry=r)


@dataclasses.dataclass
class Received:
  """A message as the worker sees it: its bytes and how to settle it."""
  data: bytes
  message_id: str
  ack: callable
  nack: callable


class Worker:

  def __init__(self, config: SyncConfig, senders: Mapping[str, Sender], store, publisher,
               metrics: Metrics, limiters: Mapping | None = None, after_batch=None):
    self._config, self._senders, self._store = config, senders, store
    self._publisher, self._metrics = publisher, metrics
    self._limiters = limiters or {}
    # Called after each batch is settled: sends the acks and nacks (connector/sync/pull.py).
    self._after_batch = after_batch or (lambda: None)
    self._validate = schemas.profile_change_validator()
    self._pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=max(1, len(config.destinations)), thread_name_prefix='sync-destination')
    self.inbox: queue.Queue[Received] = queue.Queue()
    self.heartbeat = time.monotonic()

  def on_batch_settled(self, callback) -> None:
    """`callback()` runs after each batch's messages were acked or nacked (the puller's flush)."""
    self._after_batch = callback

  # ---- the loop -----------------------------------------------------------------------------

  def next_batch(self, stop: threading.Event) -> list[Received]:
    """Waits for a first message, then collects for `batch_seconds` (or `max_batch`)."""
    batch: list[Received] = []
    while not batch and not stop.is_set():
      self.heartbeat = time.monotonic()
      try:
        batch.append(self.inbox.get(timeout=0.5))
      except queue.Empty:
        continue
    deadline = time.monotonic() + self._config.batch_seconds
    while batch and len(batch) < self._config.max_batch:
      left = deadline - time.monotonic()
      if left <= 0:
        break
      try:
        batch.append(self.inbox.get(timeout=left))
      except queue.Empty:
        break
    return batch

  def run(self, stop: threading.Event) -> None:
    while not stop.is_set():
      batch = self.next_batch(stop)
      if batch:
        self.handle(batch)
        self._after_batch()
      for name, limiter in self._limiters.items():
        self._metrics.rate.labels(name).set(limiter.rate())

  # ---- one batch ----------------------------------------------------------------------------

  def handle(self, batch: list[Received]) -> bool:
    """Delivers one batch; True when every message was acknowledged."""
    self.heartbeat = time.monotonic()
    changes, valid = [], []
    for received in batch:
      try:
        changes.append(self._validate(orjson.loads(received.data)))
        valid.append(received)
      except (orjson.JSONDecodeError, fastjsonschema.JsonSchemaException) as err:
        self._dead_letter_message(received, f'not a profile change: {str(err)[:300]}')
        self._metrics.messages.labels('invalid').inc()
        received.ack()
    pending = plan.coalesce(changes)
    deleted = [c for c, p in pending.items() if p.deleted]
    if deleted:
      self._metrics.deletions.inc(len(deleted))
      for customer in deleted:
        del pending[customer]
    futures = [self._pool.submit(self._sync_or_nack, destination, pending)
               for destination in self._config.destinations]
    complete = all(f.result() for f in futures)
    for received in valid:
      (received.ack if complete else received.nack)()
    self._metrics.messages.labels('acked' if complete else 'nacked').inc(len(valid))
    self._metrics.batches.inc()
    _log.info('batch handled', extra={'messages': len(batch), 'customers': len(pending),
                                      'complete': complete})
    return complete

  def _sync_or_nack(self, destination: Destination, pending: Mapping[str, plan.Pending]) -> bool:
    """`_sync`, with a failure of the state store or the dead-letter topic (after their own
    retries) logged and the batch left to come back, instead of ending the worker."""
    try:
      return self._sync(destination, pending)
    except Exception:  # noqa: BLE001 (the batch is nacked and comes back; nothing is dropped)
      _log.exception('destination failed; the batch is nacked and comes back',
                     extra={'destination': destination.name})
      return False

  def _sync(self, destination: Destination, pending: Mapping[str, plan.Pending]) -> bool:
    """One destination's part of a batch; False when some items must come back later."""
    name = destination.name
    attrs = {c: a for c, p in pending.items() if (a := plan.attributes(p, destination))}
    if not attrs:
      return True
    stored = self._store.get(name, attrs)
    items, states, quiet = [], {}, {}
    unchanged = older = 0
    for customer, customer_attrs in attrs.items():
      d = plan.delta(customer_attrs, stored.get(customer, {}))
      unchanged, older = unchanged + d.unchanged, older + d.older
      if d.send:
        items.append(base.Item(customer, d.send))
        states[customer] = d.state
      elif d.state:
        quiet[customer] = d.state  # nothing to send, but a newer version of the same value
    self._metrics.skipped.labels(name, 'unchanged').inc(unchanged)
    self._metrics.skipped.labels(name, 'older').inc(older)
    if quiet:
      self._store.put(name, quiet)
    if not items:
      return True

    def settle(part: Delivery) -> None:
      # After each request: what was accepted is saved before the next request goes out, so a
      # worker killed mid-batch resends nothing the ESP accepted.
      if part.accepted:
        self._store.put(name, {i.customer_id: states[i.customer_id] for i in part.accepted})
      for failure in part.failed:
        self._dead_letter_item(destination, failure)

    delivery = self._senders[name].deliver(items, settle)
    if delivery.exhausted:
      self._metrics.exhausted.labels(name).inc(len(delivery.exhausted))
      return False
    return True

  # ---- backfill -----------------------------------------------------------------------------

  def backfill(self, destination: Destination, documents, chunk: int = 500) -> dict:
    """Sends one destination every mapped attribute of `documents` ((customer id, stored
    document) pairs) it has not received: a new destination, or one whose state was deleted.
    The same rules as the stream: state per attribute, nothing sent twice, rate limit, retries,
    dead letters. Returns counts; `incomplete` customers' retries ran out (run it again)."""
    counts = {'documents': 0, 'customers_incomplete': 0}
    now = time.time_ns() // 1000

    def flush(rows):
      made = [profile_changes.profile_change(c, None, d, d.get('version') or 1, now)
              for c, d in rows]
      pending = plan.coalesce(c for c in made if c is not None)
      if not self._sync_or_nack(destination, pending):
        counts['customers_incomplete'] += len(pending)
      counts['documents'] += len(rows)
      _log.info('backfill progress', extra={'destination': destination.name, **counts})

    rows = []
    for customer_id, document in documents:
      rows.append((customer_id, document))
      if len(rows) >= chunk:
        flush(rows)
        rows = []
    if rows:
      flush(rows)
    return counts

  # ---- dead letters -------------------------------------------------------------------------

  def _publish(self, body: dict, **attributes) -> None:
    self._publisher.publish(self._config.dead_letter_topic, orjson.dumps(body),
                            **attributes).result(timeout=60)

  def _dead_letter_item(self, destination: Destination, failure: Failure) -> None:
    self._publish({'destination': destination.name, 'type': destination.type,
                   'customer_id': failure.item.customer_id,
                   'attributes': failure.item.attributes, 'status': failure.status,
                   'reason': failure.reason, 'response': failure.response,
                   'dead_lettered_at': time.time()},
                  destination=destination.name, customer_id=failure.item.customer_id)
    self._metrics.dead.labels(destination.name).inc()

  def _dead_letter_message(self, received: Received, reason: str) -> None:
    self._publish({'destination': None, 'reason': reason, 'message_id': received.message_id,
                   'payload': received.data[:10_000].decode('utf-8', errors='replace'),
                   'dead_lettered_at': time.time()}, message_id=received.message_id)
    _log.warning('invalid profile change dead-lettered', extra={'message_id': received.message_id})

  def close(self) -> None:
    self._pool.shutdown(wait=True)
