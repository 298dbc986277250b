"""The trigger worker against the Pub/Sub emulator and a real local HTTP receiver: signed
delivery, retries on 500/429, dead-letter on 400, redelivery after the worker is killed."""
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import httpx
import pytest
from google.cloud import pubsub_v1

from connector import triggers, webhooks
from scripts import publish

PROJECT = 'demo-local'
SECRET = b'whsec-test-0123456789abcdef'


class Receiver(http.server.ThreadingHTTPServer):
  """The provider's webhook endpoint: records every request, answers from a per-trigger script
  of statuses (then 200), and can hold a request open to simulate a slow provider."""

  def __init__(self):
    super().__init__(('127.0.0.1', 0), _Handler)
    self.requests = []
    self.script = {}
    self.hold = set()
    threading.Thread(target=self.serve_forever, daemon=True).start()

  @property
  def url(self):
    return f'http://127.0.0.1:{self.server_address[1]}/hooks/cart'


class _Handler(http.server.BaseHTTPRequestHandler):

  def do_POST(self):
    body = self.rfile.read(int(self.headers['Content-Length']))
    trigger_id = self.headers[webhooks.ID_HEADER]
    self.server.requests.append((dict(self.headers), body))
    if trigger_id in self.server.hold:
      self.server.hold.discard(trigger_id)
      time.sleep(20)
    steps = self.server.script.get(trigger_id, [])
    status, extra = steps.pop(0) if steps else (200, {})
    self.send_response(status)
    for name, value in extra.items():
      self.send_header(name, value)
    payload = b'{"error": "bad cart"}' if status == 400 else b'{}'
    self.send_header('Content-Length', str(len(payload)))
    self.end_headers()
    self.wfile.write(payload)

  def log_message(self, *args):
    pass


@pytest.fixture
def setup(local_stack):
  name = f't{uuid.uuid4().hex[:8]}'
  topic, subscription = publish.ensure_topic_and_subscription(PROJECT, f'{name}-triggers',
                                                              f'{name}-worker')
  dead_topic, dead_subscription = publish.ensure_topic_and_subscription(
      PROJECT, f'{name}-dead', f'{name}-dead-reader')
  receiver = Receiver()
  settings = triggers.WorkerSettings(subscription=subscription, webhook_url=receiver.url,
                                     secret=SECRET, dead_letter_topic=dead_topic,
                                     max_attempts=4, backoff_seconds=0.01,
                                     backoff_max_seconds=0.05, timeout_seconds=5)
  yield topic, subscription, dead_subscription, receiver, settings
  receiver.shutdown()


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def send(topic, trigger_id):
  body = json.dumps({'trigger_id': trigger_id, 'trigger_type': 'cart_abandoned',
                     'customer_id': 'c1', 'cart': {'item_count': 2}}).encode()
  pubsub_v1.PublisherClient().publish(topic, body, trigger_id=trigger_id).result(timeout=30)
  return body


def pull_all(subscription, expect=0, seconds=None):
  """Messages on `subscription`, polling until `expect` arrived (or 2 s when expecting none:
  the emulator may answer a pull empty before a just-published message is available). The
  emulator holds an empty pull until about a second before its timeout, so no pull's timeout
  reaches past the deadline (a 5 s pull made the 2 s of an empty look last 4)."""
  messages = []
  deadline = time.monotonic() + (seconds or (10 if expect else 2))
  with pubsub_v1.SubscriberClient() as subscriber:
    while time.monotonic() < deadline and (not expect or len(messages) < expect):
      timeout = min(5.0, max(1.0, deadline - time.monotonic()))
      reply = subscriber.pull(subscription=subscription, max_messages=50, timeout=timeout)
      if reply.received_messages:
        subscriber.acknowledge(subscription=subscription,
                               ack_ids=[m.ack_id for m in reply.received_messages])
        messages.extend(m.message for m in reply.received_messages)
      else:
        time.sleep(0.2)
  return messages


def test_delivery_is_signed_and_the_message_acknowledged(setup):
  topic, subscription, dead, receiver, settings = setup
  body = send(topic, 'tr-1')
  assert triggers.Worker(settings).run_once() == 1
  [(headers, received)] = receiver.requests
  assert received == body
  assert webhooks.verify(SECRET, headers, received)             # what the provider checks
  assert not webhooks.verify(b'another-secret-012345', headers, received)
  assert not webhooks.verify(SECRET, headers, received + b' ')  # a tampered body fails
  assert headers[webhooks.ID_HEADER] == headers['Idempotency-Key'] == 'tr-1'
  assert pull_all(subscription) == [] and pull_all(dead) == []


def sample(metrics, name, **labels):
  """One sample of the worker's registry; None when it has no such sample."""
  return metrics.registry.get_sample_value(name, labels)


def test_500_and_429_are_retried_with_the_same_idempotency_key(setup):
  topic, subscription, dead, receiver, settings = setup
  receiver.script['tr-2'] = [(500, {}), (429, {'Retry-After': '0'}), (503, {})]
  send(topic, 'tr-2')
  worker = triggers.Worker(settings)
  worker.run_once()
  assert [h[webhooks.ID_HEADER] for h, _ in receiver.requests] == ['tr-2'] * 4
  assert pull_all(subscription) == [] and pull_all(dead) == []
  # Each attempt counted by its status and timed; the message counted once, delivered.
  m = worker.metrics
  assert [sample(m, 'triggers_webhook_requests_total', status=s)
          for s in ('500', '429', '503', '200')] == [1, 1, 1, 1]
  assert sample(m, 'triggers_webhook_seconds_count') == 4
  assert sample(m, 'triggers_messages_total', result='delivered') == 1
  assert sample(m, 'triggers_messages_total', result='dead_lettered') is None
  assert sample(m, 'triggers_oldest_message_age_seconds') == 0  # nothing held any more


def test_400_is_dead_lettered_with_the_response(setup):
  topic, subscription, dead, receiver, settings = setup
  receiver.script['tr-3'] = [(400, {})]
  body = send(topic, 'tr-3')
  worker = triggers.Worker(settings)
  worker.run_once()
  assert len(receiver.requests) == 1
  assert sample(worker.metrics, 'triggers_messages_total', result='dead_lettered') == 1
  assert sample(worker.metrics, 'triggers_webhook_requests_total', status='400') == 1
  [letter] = pull_all(dead, expect=1)
  record = json.loads(letter.data)
  assert (record['trigger_id'], record['status'], record['attempts']) == ('tr-3', 400, 1)
  assert record['response'] == '{"error": "bad cart"}' and record['payload'] == body.decode()
  assert letter.attributes['trigger_id'] == 'tr-3'
  assert pull_all(subscription) == []


def test_retries_exhausted_are_dead_lettered(setup):
  topic, subscription, dead, receiver, settings = setup
  receiver.script['tr-4'] = [(500, {})] * 10
  send(topic, 'tr-4')
  triggers.Worker(settings).run_once()
  assert len(receiver.requests) == settings.max_attempts
  [letter] = pull_all(dead, expect=1)
  assert json.loads(letter.data)['reason'].startswith('retries exhausted')


def test_a_worker_killed_mid_delivery_loses_nothing(local_stack, setup):
  topic, _, dead, receiver, settings = setup
  name = f'crash{uuid.uuid4().hex[:6]}'
  with pubsub_v1.SubscriberClient() as subscriber:
    subscription = f'projects/{PROJECT}/subscriptions/{name}'
    subscriber.create_subscription(name=subscription, topic=topic, ack_deadline_seconds=10)
  receiver.hold.add('tr-5')  # the provider is slow on the first attempt
  before = time.time()
  send(topic, 'tr-5')
  after = time.time()
  port = _free_port()
  env = {**os.environ, 'TRIGGERS_SUBSCRIPTION': subscription, 'TRIGGERS_WEBHOOK_URL': receiver.url,
         'TRIGGERS_SIGNING_SECRET': SECRET.decode(), 'TRIGGERS_DEAD_LETTER_TOPIC':
             settings.dead_letter_topic, 'TRIGGERS_BACKOFF_SECONDS': '0.01',
         'TRIGGERS_METRICS_LISTEN': f'127.0.0.1:{port}'}
  worker = subprocess.Popen([sys.executable, '-m', 'connector.triggers'], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 30
  while not receiver.requests and time.monotonic() < deadline:
    time.sleep(0.1)
  assert receiver.requests, 'the worker never called the webhook'
  # Its /metrics, while the trigger is held: the message's age from its publish time.
  asked = time.time()
  text = httpx.get(f'http://127.0.0.1:{port}/metrics', timeout=5).text
  answered = time.time()
  [age] = [float(line.split()[1]) for line in text.splitlines()
           if line.startswith('triggers_oldest_message_age_seconds ')]
  assert asked - after - 0.05 <= age <= answered - before + 0.05, (age, asked - after)
  worker.send_signal(signal.SIGKILL)  # dies while the webhook call is in flight
  worker.wait(timeout=10)
  restarted = subprocess.Popen([sys.executable, '-m', 'connector.triggers'], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.monotonic() + 60
    while len(receiver.requests) < 2 and time.monotonic() < deadline:
      time.sleep(0.2)
  finally:
    restarted.terminate()
    restarted.wait(timeout=10)
  ids = [h[webhooks.ID_HEADER] for h, _ in receiver.requests]
  assert ids[:2] == ['tr-5', 'tr-5']  # redelivered after the crash, same idempotency key
  assert pull_all(dead) == []


def test_audience_changes_the_pipeline_publishes_are_delivered_signed_like_triggers(setup):
  """One delivery mechanism: the job's PublishAudienceChanges (--audience_topic) and this
  worker deliver Segment's Audience Entered event as a signed webhook, its messageId the
  idempotency key."""
  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions

  from transforms.rules.audiences import membership
  from transforms.settings import TriggersTopic
  from transforms.sinks.pubsub import PublishAudienceChanges
  topic, subscription, dead, receiver, settings = setup
  change = {'customer_id': 'c1', 'audience': 'games_fans', 'change': 'entered',
            'changed_at': 1_763_000_000_000_000}
  with beam.Pipeline(options=PipelineOptions(runner='FnApiRunner')) as p:
    _ = (p | beam.Create([change])
         | PublishAudienceChanges(TriggersTopic(topic, 'audience_topic')))
  assert triggers.Worker(settings).run_once() == 1
  [(headers, received)] = receiver.requests
  expected = membership.segment_event(change)
  assert json.loads(received) == expected
  assert expected['event'] == 'Audience Entered'
  assert expected['properties'] == {'audience_key': 'games_fans', 'games_fans': True}
  assert webhooks.verify(SECRET, headers, received)
  assert headers['Idempotency-Key'] == expected['messageId']
  assert pull_all(subscription) == [] and pull_all(dead) == []
