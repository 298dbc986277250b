"""The trigger worker: `python -m connector.triggers`.

Pulls cart-abandonment triggers from a Pub/Sub subscription (the pipeline publishes them on
--triggers_topic), POSTs each to the provider's webhook URL signed with HMAC-SHA256
(connector/webhooks.py), retries network errors, 408, 429 and 5xx with exponential backoff and
jitter (honouring Retry-After), and sends permanent failures (other 4xx, or retries exhausted) to a
dead-letter topic with the response. A message is acknowledged only after it was delivered or
dead-lettered, so a worker that dies mid-delivery loses nothing: Pub/Sub redelivers it, with the
same trigger_id as idempotency key (at-least-once delivery).

Environment: TRIGGERS_SUBSCRIPTION (projects/P/subscriptions/S), TRIGGERS_WEBHOOK_URL,
TRIGGERS_SIGNING_SECRET or TRIGGERS_SIGNING_SECRET_FILE, TRIGGERS_DEAD_LETTER_TOPIC
(projects/P/topics/T), TRIGGERS_MAX_ATTEMPTS (8), TRIGGERS_BACKOFF_SECONDS (0.5),
TRIGGERS_BACKOFF_MAX_SECONDS (60), TRIGGERS_TIMEOUT_SECONDS (10), TRIGGERS_METRICS_LISTEN
(127.0.0.1:9465: where /metrics is served, HOST:PORT; docs/OPERATIONS.md lists the metrics).
PUBSUB_EMULATOR_HOST is honoured.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import random
import re
import sys
import threading
import time

import httpx
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import start_http_server

from connector import logs, webhooks
from connector.config import ConfigError

_log = logging.getLogger('connector.triggers')
_LISTEN = re.compile(r'(?P<host>[^\s:]+):(?P<port>\d{1,5})')


def parse_listen(value: str) -> tuple[str, int]:
  """'HOST:PORT' -> (host, port); ConfigError naming TRIGGERS_METRICS_LISTEN otherwise."""
  where = _LISTEN.fullmatch(value.strip())
  if not where or int(where['port']) > 65535:
    raise ConfigError(f'TRIGGERS_METRICS_LISTEN must be HOST:PORT, got {value!r}')
  return where['host'], int(where['port'])


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
  subscription: str
  webhook_url: str
  secret: bytes = dataclasses.field(repr=False)
  dead_letter_topic: str
  max_attempts: int = 8
  backoff_seconds: float = 0.5
  backoff_max_seconds: float = 60.0
  timeout_seconds: float = 10.0
  metrics_listen: tuple[str, int] = ('127.0.0.1', 9465)

  @classmethod
  def from_env(cls, env=None) -> 'WorkerSettings':
    env = os.environ if env is None else env
    missing = [name for name in ('TRIGGERS_SUBSCRIPTION', 'TRIGGERS_WEBHOOK_URL',
                                 'TRIGGERS_DEAD_LETTER_TOPIC') if not env.get(name)]
    if missing:
      raise ConfigError(f'set {", ".join(missing)}')
    secret = env.get('TRIGGERS_SIGNING_SECRET', '')
    if env.get('TRIGGERS_SIGNING_SECRET_FILE'):
      secret = pathlib.Path(env['TRIGGERS_SIGNING_SECRET_FILE']).read_text().strip()
    if len(secret) < 16:
      raise ConfigError('set TRIGGERS_SIGNING_SECRET (or _FILE) to a secret of 16+ characters')
    return cls(subscription=env['TRIGGERS_SUBSCRIPTION'], webhook_url=env['TRIGGERS_WEBHOOK_URL'],
               secret=secret.encode(), dead_letter_topic=env['TRIGGERS_DEAD_LETTER_TOPIC'],
               max_attempts=int(env.get('TRIGGERS_MAX_ATTEMPTS', '8')),
               backoff_seconds=float(env.get('TRIGGERS_BACKOFF_SECONDS', '0.5')),
               backoff_max_seconds=float(env.get('TRIGGERS_BACKOFF_MAX_SECONDS', '60')),
               timeout_seconds=float(env.get('TRIGGERS_TIMEOUT_SECONDS', '10')),
               metrics_listen=parse_listen(env.get('TRIGGERS_METRICS_LISTEN', '127.0.0.1:9465')))


class Metrics:
  """The worker's Prometheus metrics (its own registry, served on TRIGGERS_METRICS_LISTEN)."""

  def __init__(self, registry: CollectorRegistry | None = None):
    self.registry = r = registry or CollectorRegistry()
    self.messages = Counter('triggers_messages', 'Triggers handled, by result (delivered, '
                            'dead_lettered)', ['result'], registry=r)
    self.requests = Counter('triggers_webhook_requests', 'Webhook requests by status (error: '
                            'no answer)', ['status'], registry=r)
    self.latency = Histogram('triggers_webhook_seconds', 'Webhook request latency, each attempt',
                             buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10), registry=r)
    self.oldest = Gauge('triggers_oldest_message_age_seconds', 'Age (from its Pub/Sub publish '
                        'time) of the oldest trigger pulled and not yet acknowledged; 0 when '
                        'none is held', registry=r)


@dataclasses.dataclass
class Outcome:
  result: str                 # webhooks.DELIVERED or webhooks.DEAD
  attempts: int
  status: int | None = None
  response: str = ''
  reason: str = ''


def deliver(http: httpx.Client, settings: WorkerSettings, trigger_id: str, body: bytes,
            sleep=time.sleep, rng: random.Random | None = None,
            metrics: Metrics | None = None) -> Outcome:
  """POSTs one trigger until it is delivered, permanently refused, or out of attempts; each
  attempt is counted in `metrics` (by status) and timed."""
  status, text, reason = None, '', ''
  for attempt in range(settings.max_attempts):
    wait = None
    started = time.perf_counter()
    try:
      try:
        reply = http.post(settings.webhook_url, content=body,
                          headers=webhooks.headers(settings.secret, trigger_id, body))
      finally:
        if metrics is not None:
          metrics.latency.observe(time.perf_counter() - started)
      status, text = reply.status_code, reply.text[:2000]
      if metrics is not None:
        metrics.requests.labels(str(status)).inc()
      verdict = webhooks.classify(status)
      if verdict == webhooks.DELIVERED:
        return Outcome(webhooks.DELIVERED, attempt + 1, status)
      if verdict == webhooks.DEAD:
        return Outcome(webhooks.DEAD, attempt + 1, status, text, f'permanent HTTP {status}')
      reason = f'HTTP {status}'
      wait = webhooks.retry_after(reply.headers.get('retry-after'), settings.backoff_max_seconds)
    except httpx.TransportError as err:
      status, text, reason = None, '', f'{type(err).__name__}: {err}'
      if metrics is not None:
        metrics.requests.labels('error').inc()
    if attempt + 1 < settings.max_attempts:
      delay = wait if wait is not None else webhooks.backoff(
          attempt, settings.backoff_seconds, settings.backoff_max_seconds, rng)
      _log.info('retrying trigger', extra={'trigger_id': trigger_id, 'attempt': attempt + 1,
                                           'reason': reason, 'delay_s': round(delay, 3)})
      sleep(delay)
  return Outcome(webhooks.DEAD, settings.max_attempts, status, text,
                 f'retries exhausted ({reason})')


def dead_letter_message(payload: bytes, trigger_id: str, outcome: Outcome) -> bytes:
  return orjson.dumps({'trigger_id': trigger_id, 'reason': outcome.reason,
                       'attempts': outcome.attempts, 'status': outcome.status,
                       'response': outcome.response,
                       'payload': payload.decode('utf-8', errors='replace')})


def oldest_age(publish_times, now: float) -> float:
  """Seconds since the oldest of `publish_times` (Unix seconds); 0 for none."""
  return max(0.0, now - min(publish_times)) if publish_times else 0.0


class Worker:
  """Pulls and handles messages; one message at a time, in order of arrival."""

  def __init__(self, settings: WorkerSettings, metrics: Metrics | None = None):
    from google.cloud import pubsub_v1  # honours PUBSUB_EMULATOR_HOST
    self._settings = settings
    self._subscriber = pubsub_v1.SubscriberClient()
    self._publisher = pubsub_v1.PublisherClient()
    self._http = httpx.Client(timeout=settings.timeout_seconds)
    self.metrics = metrics or Metrics()
    # Publish times of the messages pulled and not yet acknowledged, read at each scrape.
    self._held: dict[str, float] = {}
    self._held_lock = threading.Lock()
    self.metrics.oldest.set_function(self.oldest_held_age)

  def oldest_held_age(self) -> float:
    with self._held_lock:
      held = list(self._held.values())
    return oldest_age(held, time.time())

  def run_once(self, max_messages: int = 10) -> int:
    """Handles up to `max_messages` pulled messages; returns how many were handled."""
    reply = self._subscriber.pull(subscription=self._settings.subscription,
                                  max_messages=max_messages, timeout=30)
    with self._held_lock:
      self._held.update((r.ack_id, r.message.publish_time.timestamp())
                        for r in reply.received_messages)
    for received in reply.received_messages:
      self._handle(received)
    return len(reply.received_messages)

  def run_forever(self) -> None:
    while True:
      if not self.run_once():
        time.sleep(0.5)

  def _handle(self, received) -> None:
    message = received.message
    try:
      trigger_id = message.attributes.get('trigger_id') or orjson.loads(message.data)['trigger_id']
    except (orjson.JSONDecodeError, KeyError, TypeError):
      trigger_id = f'message-{message.message_id}'
    outcome = deliver(self._http, self._settings, trigger_id, message.data,
                      metrics=self.metrics)
    if outcome.result == webhooks.DEAD:
      self._publisher.publish(self._settings.dead_letter_topic,
                              dead_letter_message(message.data, trigger_id, outcome),
                              trigger_id=trigger_id).result(timeout=60)
      _log.warning('trigger dead-lettered', extra={'trigger_id': trigger_id,
                                                   'reason': outcome.reason})
    else:
      _log.info('trigger delivered', extra={'trigger_id': trigger_id,
                                            'attempts': outcome.attempts})
    # Only now: delivered, or safely in the dead-letter topic.
    self._subscriber.acknowledge(subscription=self._settings.subscription,
                                 ack_ids=[received.ack_id])
    with self._held_lock:
      self._held.pop(received.ack_id, None)
    self.metrics.messages.labels('dead_lettered' if outcome.result == webhooks.DEAD
                                 else 'delivered').inc()


def main() -> int:
  logs.configure()
  try:
    settings = WorkerSettings.from_env()
  except ConfigError as err:
    print(f'error: {err}', file=sys.stderr)
    return 2
  worker = Worker(settings)
  host, port = settings.metrics_listen
  try:
    start_http_server(port, addr=host, registry=worker.metrics.registry)
  except OSError as err:
    print(f'error: cannot listen on {host}:{port} (TRIGGERS_METRICS_LISTEN): {err.strerror}',
          file=sys.stderr)
    return 2
  worker.run_forever()
  return 0


if __name__ == '__main__':
  sys.exit(main())
