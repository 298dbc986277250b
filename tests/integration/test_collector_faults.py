"""Failures injected around the tracking collector (`python -m collector` against the Pub/Sub
emulator, under load from threads sending /v1/track calls with unique messageIds): an answer of
200 always means the event is in the subscription.

- Pub/Sub stops answering (the emulator is paused with SIGSTOP) mid-load: requests get 503 with
  Retry-After once the publish timeout passes, never a 200; after SIGCONT the collector answers
  200 again without a restart.
- The collector is SIGKILLed under load: whatever it answered 200 before is published.
- SIGTERM with requests in flight (one of them still sending its body): each is answered, the
  collector exits 0, and every event answered 200 is published.
- SIGHUP after the key file was rotated: the new key works, the removed one gets 401, same
  process; a broken file on SIGHUP leaves the keys as they were.
"""
import collections
import os
import signal
import socket
import threading
import time
import uuid

import httpx
import orjson
import pytest

from scripts import collect, localstack, publish
from scripts.demo_connector import free_port, wait_ready
from tests.integration.helpers import paused
from tests.integration.test_collector_abuse import (Subscription, basic, read_response,
                                                    request_head)

PROJECT = 'demo-local'
KEY = f'wk_faults_{uuid.uuid4().hex[:16]}'
pytestmark = pytest.mark.faults


class Collector:
  def __init__(self, process, base, port, log, subscription):
    self.process, self.base, self.port, self.log = process, base, port, log
    self.subscription = subscription


@pytest.fixture
def start(local_stack, tmp_path):
  """start(env overrides, keys) -> a Collector on a topic and subscription of its own; stopped
  (SIGTERM, SIGKILL after 30 s) at the end of the test if it still runs."""
  started, subscriptions = [], []

  def start_one(env=None, keys=None) -> Collector:
    name = f'faults{uuid.uuid4().hex[:10]}'
    _, subscription = publish.ensure_topic_and_subscription(PROJECT, name, f'{name}-sub')
    log = tmp_path / f'{name}.log'
    port = free_port()
    process = collect.start_collector(log, PROJECT, name, keys or {KEY: 'web'}, port,
                                      {**os.environ, **(env or {})})
    started.append(process)
    base = f'http://127.0.0.1:{port}'
    assert wait_ready(base, process), '\n'.join(localstack.tail_lines(log, 30))
    subscriptions.append(Subscription(subscription))
    return Collector(process, base, port, log, subscriptions[-1])

  yield start_one
  for process in started:
    collect.stop_collector(process)
  for subscription in subscriptions:
    subscription.client.close()


Answer = collections.namedtuple('Answer', 'message_id status retry_after started ended')


class Load:
  """`threads` senders posting one /v1/track call after another, each with a fresh messageId,
  until stopped. `answers` holds every call's outcome (status None: no answer, the connection
  failed)."""

  def __init__(self, base, threads=3, key=KEY):
    self.base, self.key = base, key
    self.answers: list[Answer] = []
    self._stop = threading.Event()
    self._lock = threading.Lock()
    self._threads = [threading.Thread(target=self._send, args=(f'load-{uuid.uuid4().hex[:8]}',),
                                      daemon=True) for _ in range(threads)]

  def __enter__(self):
    for thread in self._threads:
      thread.start()
    return self

  def __exit__(self, *_):
    self._stop.set()
    for thread in self._threads:
      thread.join(30)
    assert not any(t.is_alive() for t in self._threads)

  def _send(self, prefix):
    with httpx.Client(base_url=self.base, timeout=15, headers=basic(self.key)) as client:
      n = 0
      while not self._stop.is_set():
        n += 1
        message_id = f'{prefix}-{n}'
        started = time.monotonic()
        try:
          reply = client.post('/v1/track', content=orjson.dumps(
              {'type': 'track', 'event': 'Load', 'messageId': message_id, 'userId': 'u-load'}))
          status, retry = reply.status_code, reply.headers.get('retry-after')
        except httpx.TransportError:
          status, retry = None, None
          time.sleep(0.05)  # the collector is gone or going: do not spin
        with self._lock:
          self.answers.append(Answer(message_id, status, retry, started, time.monotonic()))

  def wait(self, predicate, seconds, what):
    deadline = time.monotonic() + seconds
    while not predicate(list(self.answers)):
      assert time.monotonic() < deadline, f'timed out after {seconds} s waiting for {what}'
      time.sleep(0.05)

  def ok(self, since=0.0) -> list[str]:
    return [a.message_id for a in self.answers if a.status == 200 and a.started >= since]


def published(collector: Collector, message_ids, seconds=90) -> collections.Counter:
  """The messageIds in the subscription, pulled until each of `message_ids` is there."""
  messages = collector.subscription.pull_ids(message_ids, seconds)
  return collections.Counter(event['messageId'] for event, _ in messages)


def test_pubsub_paused_mid_load_gives_503_never_a_false_200_and_recovers(start, local_stack_dir):
  collector = start({'COLLECTOR_PUBLISH_TIMEOUT_SECONDS': '2'})
  pixel_id = f'pixel-{uuid.uuid4().hex[:8]}'
  with Load(collector.base) as load:
    load.wait(lambda a: len(load.ok()) >= 20, 30, '20 events accepted before the pause')
    with paused(local_stack_dir, 'pubsub'):
      paused_at = time.monotonic()
      load.wait(lambda a: sum(x.status == 503 and x.started > paused_at for x in a) >= 6, 30,
                'six requests sent during the pause answered 503')
      assert httpx.get(collector.base + '/healthz', timeout=10).status_code == 200
      assert httpx.get(collector.base + '/readyz', timeout=10).status_code == 503
      # A pixel answers its GIF whatever was wrong, but not 200 for an event Pub/Sub did not take.
      pixel = httpx.get(collector.base + '/pixel/v1/track', timeout=10, params={
          'writeKey': KEY, 'messageId': pixel_id, 'anonymousId': 'a'})
      assert (pixel.status_code, pixel.headers['content-type'], pixel.headers['retry-after']) \
          == (503, 'image/gif', '1')
      resumed_at = time.monotonic()
    load.wait(lambda a: len(load.ok(since=resumed_at + 0.5)) >= 20, 60,
              '20 events accepted after the pause')
  answers = load.answers
  assert {a.status for a in answers} <= {200, 503}, collections.Counter(a.status for a in answers)
  during = [a for a in answers if a.started > paused_at and a.ended < resumed_at]
  assert during and all(a.status == 503 and a.retry_after == '1' for a in during), during
  # Pub/Sub was unreachable for all of it: answered only once the publish timeout had passed.
  assert all(a.ended - a.started >= 1.9 for a in during)
  assert all(a.retry_after == '1' for a in answers if a.status == 503)
  accepted = [a.message_id for a in answers if a.status == 200]
  arrived = published(collector, accepted)
  assert not [m for m in accepted if m not in arrived]
  # 503'd events may arrive too (the client retried them on its own); nothing else does.
  assert set(arrived) <= {a.message_id for a in answers} | {pixel_id}


def test_a_collector_killed_under_load_has_published_every_event_it_answered_200(start):
  collector = start()
  with Load(collector.base, threads=4) as load:
    load.wait(lambda a: len(load.ok()) >= 100, 30, '100 events accepted')
    os.killpg(collector.process.pid, signal.SIGKILL)
    assert collector.process.wait(10) == -signal.SIGKILL
    killed_at = time.monotonic()
    load.wait(lambda a: any(x.status is None and x.started > killed_at for x in a), 10,
              'a request refused by the dead collector')
  accepted = load.ok()
  assert {a.status for a in load.answers} <= {200, None}
  arrived = published(collector, accepted)
  assert not [m for m in accepted if m not in arrived]


def test_sigterm_with_requests_in_flight_answers_them_publishes_them_and_exits_0(start):
  collector = start()
  straggler = f'straggler-{uuid.uuid4().hex[:8]}'
  data = orjson.dumps({'type': 'track', 'messageId': straggler, 'userId': 'u-slow'})
  with Load(collector.base, threads=4) as load:
    load.wait(lambda a: len(load.ok()) >= 50, 30, '50 events accepted')
    with socket.create_connection(('127.0.0.1', collector.port), timeout=30) as sock:
      # A request in flight: its headers and half its body are in when SIGTERM arrives.
      sock.sendall(request_head(b'POST', b'/v1/track', [
          b'Host: x', b'Authorization: ' + basic(KEY)['Authorization'].encode(),
          b'Content-Length: %d' % len(data)]) + data[:10])
      time.sleep(0.3)
      collector.process.send_signal(signal.SIGTERM)
      time.sleep(0.5)
      assert collector.process.poll() is None  # still waiting for the request in flight
      sock.sendall(data[10:])
      status, _, reply = read_response(sock)
    assert (status, reply) == (200, b'{"success":true}')
    assert collector.process.wait(30) == 0
    stopped_at = time.monotonic()
    load.wait(lambda a: any(x.status is None and x.started > stopped_at for x in a), 10,
              'a request refused once the collector has exited')
  accepted = load.ok() + [straggler]
  assert {a.status for a in load.answers} <= {200, None}
  arrived = published(collector, accepted)
  assert not [m for m in accepted if m not in arrived]
  log = collector.log.read_text()
  assert 'Application shutdown complete' in log and '"level":"ERROR"' not in log


def test_sighup_rotates_the_key_file_without_a_restart(start, tmp_path):
  old, new, kept = (f'wk_{name}_{uuid.uuid4().hex[:12]}' for name in ('old', 'new', 'kept'))
  key_file = tmp_path / 'keys'

  def rotate(text):
    partial = tmp_path / 'keys.partial'
    partial.write_text(text)
    partial.replace(key_file)  # as a secret mount swaps it: whole or not at all

  rotate(f'# before\n{old}:web\n{kept}:server\n')
  collector = start({'COLLECTOR_WRITE_KEYS_FILE': str(key_file)}, keys={KEY: 'fixed'})
  client = httpx.Client(base_url=collector.base, timeout=10)
  sent = []

  def status(key):
    message_id = f'hup-{uuid.uuid4().hex[:10]}'
    code = client.post('/v1/track', headers=basic(key), content=orjson.dumps(
        {'type': 'track', 'messageId': message_id, 'userId': 'u'})).status_code
    if code == 200:
      sent.append(message_id)
    return code

  assert [status(k) for k in (old, new, kept, KEY)] == [200, 401, 200, 200]
  rotate(f'# after\n{new}:web\n{kept}:server\n')
  collector.process.send_signal(signal.SIGHUP)
  deadline = time.monotonic() + 10
  while status(new) != 200:
    assert time.monotonic() < deadline, 'the new key was not taken up after SIGHUP'
    time.sleep(0.1)
  assert [status(k) for k in (old, new, kept, KEY)] == [401, 200, 200, 200]

  rotate(f'{new}:web\nnot a key line\n')  # broken: the keys in force stay
  collector.process.send_signal(signal.SIGHUP)
  deadline = time.monotonic() + 10
  while 'write keys not reloaded' not in collector.log.read_text():
    assert time.monotonic() < deadline, 'the broken key file was not reported'
    time.sleep(0.1)
  assert [status(k) for k in (old, new, kept, KEY)] == [401, 200, 200, 200]
  assert collector.process.poll() is None
  client.close()

  arrived = published(collector, sent)
  assert arrived == collections.Counter(sent)
  log = collector.log.read_text()
  assert log.count('collector starting') == 1  # the same process throughout
  assert not [k for k in (old, new, kept, KEY) if k in log]
