"""GET /v1/stream over real HTTP (uvicorn on a free loopback port) fed by the Pub/Sub emulator:
latency from publish to client, resume by Last-Event-ID and reset, a stalled subscriber dropped
while another reads every event, filters, auth, limits, and a SIGTERM that ends open streams and
deletes the instance's subscription (`python -m connector`, as deployed)."""
import datetime as dt
import hashlib
import json
import os
import pathlib
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid

import httpx
import orjson
import pytest
from google.cloud import pubsub_v1

from connector.config import Settings, StreamSettings
from scripts.demo_connector import free_port
from tests.integration.helpers import wait_for
from tests.integration.test_connector_api import serving

PROJECT = 'demo-local'
KEY = 'k-stream-0123456789abcdef'
AUTH = {'Authorization': f'Bearer {KEY}'}
ROOT = pathlib.Path(__file__).resolve().parents[2]
QUEUE = 200
BUFFER = 5000


def wait_until(predicate, timeout: float, what: str):
  """Polls `predicate` every 20 ms until it is true (returns its value) or fails the test."""
  return wait_for(predicate, timeout, what, every=0.02)


def new_topic() -> str:
  topic = f'projects/{PROJECT}/topics/changes-{uuid.uuid4().hex[:10]}'
  pubsub_v1.PublisherClient().create_topic(name=topic)
  return topic


class Changes:
  """Publishes profile changes as the pipeline does (attributes change_id, customer_id), each a
  new customer version, written_at = the time of publishing."""

  def __init__(self, topic: str):
    self.topic = topic
    self.publisher = pubsub_v1.PublisherClient(
        batch_settings=pubsub_v1.types.BatchSettings(max_messages=500, max_latency=0.005))
    self.version = int(time.time() * 1e6)

  def make(self, customer_id='c1', changed=None, entered=(), exited=(), deleted=False) -> dict:
    self.version += 1
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    return {'change_id': hashlib.sha256(f'{customer_id}:{self.version}'.encode()).hexdigest()[:32],
            'customer_id': customer_id, 'version': self.version,
            'last_event_at': None if deleted else now, 'written_at': now, 'deleted': deleted,
            'changed': {} if deleted else (changed or {'segment': 'active'}),
            'audiences': {'entered': list(entered), 'exited': list(exited)}}

  def publish(self, *changes: dict, raw: bytes | None = None) -> list[dict]:
    futures = [self.publisher.publish(self.topic, orjson.dumps(c), change_id=c['change_id'],
                                      customer_id=c['customer_id']) for c in changes]
    if raw is not None:
      futures.append(self.publisher.publish(self.topic, raw))
    for future in futures:
      future.result(timeout=30)
    return list(changes)


class Reader:
  """An SSE client (httpx, streaming) on its own thread: each event with the wall-clock time it
  arrived, and comment lines. `close()` stops it at the next line (heartbeats come every 0.5 s)."""

  def __init__(self, base: str, headers=None, params=None):
    self.events: list[dict] = []
    self.comments: list[str] = []
    self.status = None
    self.headers = None
    self.body = b''
    self.ended = None
    self._opened = threading.Event()
    self._stop = False
    self._thread = threading.Thread(target=self._run, args=(base, headers, params), daemon=True)
    self._thread.start()
    assert self._opened.wait(10), 'the stream did not answer'

  def _run(self, base, headers, params):
    try:
      with httpx.Client(base_url=base, timeout=httpx.Timeout(10, read=30)) as http:
        with http.stream('GET', '/v1/stream', headers={**AUTH, **(headers or {})},
                         params=params) as response:
          self.status, self.headers = response.status_code, response.headers
          if response.status_code != 200:
            self.body = response.read()
            return
          self._opened.set()
          event: dict = {}
          for line in response.iter_lines():
            if self._stop:
              return
            if not line:
              if 'data' in event:
                event['arrived'] = time.time()
                self.events.append(event)
              event = {}
            elif line.startswith(':'):
              self.comments.append(line)
            else:
              name, _, value = line.partition(':')
              event[name] = value[1:] if value.startswith(' ') else value
        self.ended = 'closed by the server'
    except httpx.HTTPError as err:
      self.ended = type(err).__name__
    finally:
      self._opened.set()

  def changes(self, event='profile_change') -> list[dict]:
    return [json.loads(e['data']) for e in list(self.events) if e.get('event') == event]

  def ids(self) -> list[str]:
    return [e['id'] for e in list(self.events) if e.get('event') == 'profile_change']

  def wait_for(self, count: int, timeout: float = 10) -> list[dict]:
    wait_until(lambda: len(self.changes()) >= count, timeout, f'{count} events')
    return self.changes()

  def close(self):
    close(self)


def close(*readers: Reader):
  """Stops readers together (each stops at its next line: a heartbeat at the latest)."""
  for reader in readers:
    reader._stop = True
  for reader in readers:
    reader._thread.join(timeout=5)
    assert not reader._thread.is_alive()


def metric(client, name: str, labels: str = '') -> float:
  for line in client.get('/metrics', headers=AUTH).text.splitlines():
    if line.startswith(f'{name}{labels} '):
      return float(line.split()[-1])
  return 0.0


@pytest.fixture(scope='module')
def api(local_stack):
  """The connector with the stream on a fresh topic: (client, base URL, publisher)."""
  topic = new_topic()
  settings = Settings(project=PROJECT, collection=f'stream{int(time.time() * 1000)}',
                      api_keys=(KEY,), port=free_port(),
                      stream=StreamSettings(topic, buffer=BUFFER, queue=QUEUE,
                                            heartbeat_seconds=0.5, max_subscribers=4))
  with serving(settings, timeout=10) as client:
    def ready():
      with client.stream('GET', '/v1/stream', headers=AUTH) as response:
        return response.status_code == 200
    wait_until(ready, 20, 'the stream subscription')
    yield client, str(client.base_url), Changes(topic)
    wait_until(lambda: metric(client, 'connector_stream_subscribers') == 0, 5,
               'every stream closed (uvicorn waits for them)')


def test_a_subscriber_receives_each_change_within_a_second_of_its_write(api):
  client, base, changes = api
  reader = Reader(base)
  try:
    assert reader.headers['content-type'] == 'text/event-stream'
    assert reader.headers['cache-control'] == 'no-store'
    assert reader.headers['x-accel-buffering'] == 'no'
    sent = []
    for index in range(20):  # one at a time: each one's latency, not a batch's
      sent += changes.publish(changes.make(f'lat{index}', {'cart.item_count': index}))
      reader.wait_for(len(sent), timeout=5)
    got = reader.changes()
    assert got == sent
    latencies = [event['arrived'] - dt.datetime.fromisoformat(json.loads(event['data'])[
        'written_at']).timestamp() for event in reader.events]
    print(f'\nstream latency, write to client: median {statistics.median(latencies) * 1000:.1f} '
          f'ms, max {max(latencies) * 1000:.1f} ms over {len(latencies)}')
    assert max(latencies) < 1.0
    assert reader.ids() == sorted(reader.ids(), key=lambda i: int(i.rsplit('-', 1)[1]))
  finally:
    reader.close()


def test_resume_replays_exactly_the_events_after_the_id_then_live(api):
  client, base, changes = api
  first = Reader(base)
  sent = changes.publish(*[changes.make(f'res{i}') for i in range(10)])
  first.wait_for(10)
  first.close()
  ids, seen = first.ids(), first.changes()
  assert seen == sent
  # A redelivery or retried publish (the same change_id) is one event.
  changes.publish(sent[-1])
  resumed = Reader(base, headers={'Last-Event-ID': ids[3]})
  by_query = Reader(base, params={'last_event_id': ids[7]})
  try:
    more = changes.publish(*[changes.make(f'res-live{i}') for i in range(3)])
    # Everything up to the last one published, and that one last: no event twice, none missed.
    assert resumed.wait_for(9) == seen[4:] + more and resumed.ids()[:6] == ids[4:]
    assert by_query.wait_for(5) == seen[8:] + more
    assert len(set(resumed.ids())) == 9
  finally:
    close(resumed, by_query)
  instance = ids[0].rsplit('-', 1)[0]
  for stale in ('0000000000000000-3', 'not-an-id'):
    reset = Reader(base, headers={'Last-Event-ID': stale})
    try:
      wait_until(lambda: reset.events, 5, 'the reset')
      event = reset.events[0]
      assert event['event'] == 'reset' and json.loads(event['data'])['reason'] in (
          'unknown_instance', 'unknown_id')
      assert event['id'].startswith(instance)  # a position to resume from after re-reading
      live = changes.publish(changes.make('after-reset'))
      assert reset.wait_for(1) == live
    finally:
      reset.close()


def test_a_stalled_subscriber_is_dropped_and_the_others_get_every_event(api):
  client, base, changes = api
  dropped_before = metric(client, 'connector_stream_subscribers_dropped_total')
  stalled = socket.socket()
  stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
  stalled.connect(('127.0.0.1', int(base.rsplit(':', 1)[1])))
  stalled.sendall(f'GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}'
                  f'\r\n\r\n'.encode())
  reader = Reader(base)
  try:
    wait_until(lambda: metric(client, 'connector_stream_subscribers') == 2, 5, 'two subscribers')
    # Frames of about 2.3 KB, 7 MB in all: on loopback the kernel alone takes about 3 MB for a
    # socket that is never read (its send buffer starts near 4 MB there; on a real network it
    # starts small), then asyncio's 64 KB, then the queue fills.
    padding = 'x' * 2000
    started = time.monotonic()
    sent = changes.publish(*[changes.make(f'bulk{i}', {'first_name': padding, 'cart.value': i})
                             for i in range(3000)])
    got = reader.wait_for(3000, timeout=20)
    elapsed = time.monotonic() - started
    assert sorted(c['change_id'] for c in got) == sorted(c['change_id'] for c in sent)
    assert len(got) == len(set(reader.ids())) == 3000 and reader.ended is None
    assert metric(client, 'connector_stream_subscribers_dropped_total') == dropped_before + 1
    assert metric(client, 'connector_stream_subscribers') == 1
    print(f'\n3000 events to the reading subscriber in {elapsed:.2f} s, the stalled one dropped')
    # The stalled connection is closed by the server: what was sent drains, then it ends.
    stalled.settimeout(5)
    received = 0
    try:
      while chunk := stalled.recv(65536):
        received += len(chunk)
    except ConnectionResetError:
      pass
    assert received < 3000 * 2000
  finally:
    stalled.close()
    close(reader)


def test_filters_heartbeats_auth_and_limits(api):
  client, base, changes = api
  vip = Reader(base, params={'audience': 'vip,other'})
  carts = Reader(base, params=[('fields', 'cart'), ('fields', 'traits.orders_90d')])
  try:
    sent = changes.publish(
        changes.make('f1', {'segment': 'vip'}, entered=['vip']),
        changes.make('f2', {'cart.value': 9.5, 'segment': 'x', 'email_sha256': 'ab' * 32}),
        changes.make('f3', {'traits.orders_90d': 4, 'traits.ltv': 1.0}, exited=['other']),
        changes.make('f4', {'segment': 'lapsed'}, entered=['vip_2']),
        changes.make('f5', deleted=True, exited=['vip']),
        raw=b'{"not": "a change"}')
    assert [c['customer_id'] for c in vip.wait_for(3)] == ['f1', 'f3', 'f5']
    assert [(c['customer_id'], c['changed']) for c in carts.wait_for(3)] == [
        ('f2', {'cart.value': 9.5}), ('f3', {'traits.orders_90d': 4}), ('f5', {})]
    wait_until(lambda: metric(client, 'connector_stream_invalid_messages_total') >= 1, 5,
               'the invalid message counted')
    assert ': heartbeat' in wait_until(lambda: carts.comments, 2, 'a heartbeat')
    # Internal fields never leave the connector, filtered or not.
    assert all('email_sha256' not in json.dumps(c) for c in vip.changes() + carts.changes())
    assert sent[1]['changed']['email_sha256']
    # Two open here, max four: two more fit, the fifth is refused with Retry-After.
    extra = [Reader(base), Reader(base)]
    try:
      full = client.get('/v1/stream', headers=AUTH)
      assert full.status_code == 503 and full.headers['retry-after'] == '5'
      assert full.json()['error'] == 'unavailable'
    finally:
      close(*extra)
  finally:
    close(vip, carts)
  for headers in ({}, {'Authorization': 'Bearer wrong-key-0123456789'}, {'X-API-Key': 'x'}):
    refused = httpx.get(base + '/v1/stream', headers=headers)
    assert refused.status_code == 401 and refused.json() == {'error': 'unauthorized'}
  for params in ({'audience': 'VIP'}, {'fields': 'email_sha256'}, {'audience': ''},
                 {'fields': 'audiences'}, {'fields': 'segment.x'}):
    bad = client.get('/v1/stream', headers=AUTH, params=params)
    assert bad.status_code == 400 and bad.json()['error'] == 'bad_request'
  # Readers that come and go leave nothing subscribed.
  close(*[Reader(base) for _ in range(3)])
  close(Reader(base))
  wait_until(lambda: metric(client, 'connector_stream_subscribers') == 0, 5, 'no subscriber')


def test_the_stream_is_off_without_a_topic(local_stack):
  settings = Settings(project=PROJECT, api_keys=(KEY,), port=free_port())
  with serving(settings, timeout=10) as client:
    off = client.get('/v1/stream', headers=AUTH)
    assert off.status_code == 404 and 'CONNECTOR_CHANGES_TOPIC' in off.json()['message']
    assert client.get('/v1/stream').status_code == 401


def test_sigterm_ends_open_streams_and_deletes_the_subscription(local_stack, tmp_path):
  """`python -m connector` as deployed: uvicorn waits for open connections before the app's
  shutdown, so the streams must end when the server starts shutting down."""
  topic = new_topic()
  port = free_port()
  env = {**os.environ, 'CONNECTOR_PROJECT': PROJECT, 'CONNECTOR_API_KEYS': KEY,
         'CONNECTOR_PORT': str(port), 'CONNECTOR_CHANGES_TOPIC': topic,
         'CONNECTOR_STREAM_HEARTBEAT_SECONDS': '0.5'}
  log = tmp_path / 'connector.log'
  process = subprocess.Popen([sys.executable, '-m', 'connector'], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=log.open('wb'))
  base = f'http://127.0.0.1:{port}'
  try:
    def ready():
      try:
        with httpx.stream('GET', base + '/v1/stream', headers=AUTH, timeout=1) as response:
          return response.status_code == 200
      except httpx.TransportError:
        return process.poll() is not None
    wait_until(ready, 20, 'the connector with its stream')
    assert process.poll() is None, log.read_text()[-2000:]
    publisher = pubsub_v1.PublisherClient()
    subscriptions = list(publisher.list_topic_subscriptions(request={'topic': topic}))
    assert len(subscriptions) == 1 and '/subscriptions/connector-stream-' in subscriptions[0]
    readers = [Reader(base), Reader(base)]
    changes = Changes(topic)
    changes.publish(changes.make('bye'))
    for reader in readers:
      reader.wait_for(1)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=10)
    took = time.monotonic() - started
    print(f'\nSIGTERM with two open streams: exited in {took:.2f} s')
    # uvicorn re-raises the signal once it has shut down (the default action: -SIGTERM).
    assert process.returncode in (0, -signal.SIGTERM) and took < 5
    for reader in readers:
      wait_until(lambda: reader.ended, 2, 'the stream ended')
      assert reader.ended == 'closed by the server'
    close(*readers)
    assert 'Traceback' not in log.read_text() and 'change stream on' in log.read_text()
    assert list(publisher.list_topic_subscriptions(request={'topic': topic})) == []
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()


def test_a_lost_subscription_starts_over_under_a_new_instance(local_stack):
  topic = new_topic()
  settings = Settings(project=PROJECT, api_keys=(KEY,), port=free_port(),
                      stream=StreamSettings(topic, heartbeat_seconds=0.5))
  publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
  with serving(settings, timeout=10) as client:
    base = str(client.base_url)
    def ready():
      with client.stream('GET', '/v1/stream', headers=AUTH) as response:
        return response.status_code == 200
    wait_until(ready, 20, 'the stream subscription')
    changes = Changes(topic)
    reader = Reader(base)
    changes.publish(changes.make('before'))
    reader.wait_for(1)
    (lost,) = publisher.list_topic_subscriptions(request={'topic': topic})
    started = time.monotonic()
    subscriber.delete_subscription(request={'subscription': lost})
    wait_until(lambda: reader.ended, 20, 'the stream ended')
    print(f'\npull failure noticed in {time.monotonic() - started:.2f} s')
    close(reader)
    wait_until(ready, 20, 'the stream again')
    (again,) = publisher.list_topic_subscriptions(request={'topic': topic})
    assert again != lost
    resumed = Reader(base, headers={'Last-Event-ID': reader.ids()[0]})
    try:
      wait_until(lambda: resumed.events, 5, 'the reset')
      assert json.loads(resumed.events[0]['data'])['reason'] == 'unknown_instance'
      after = changes.publish(changes.make('after'))
      assert resumed.wait_for(1) == after
    finally:
      close(resumed)
